//! Erlang/OTP-style supervision for lunatic processes.
//!
//! A tree is declared in one place, as data, the way an OTP child spec list
//! reads:
//!
//! ```no_run
//! use std::time::Duration;
//! use supervisors::{
//!     ChildSpec, DynamicSupervisor, DynamicSupervisorSpec, Inbox, Incoming, Restart, Shutdown,
//!     Strategy, SupervisorRef, SupervisorSpec,
//! };
//!
//! fn acceptor(port: u16, inbox: Inbox<()>) {
//!     println!("accepting on {port}");
//!     let sessions = DynamicSupervisor::<u64, String>::lookup("sessions").unwrap();
//!     let session = sessions.start_child(42).unwrap();
//!     session.send("hello".into());
//!     while inbox.receive() != Incoming::Shutdown {}
//! }
//!
//! fn session(user: u64, inbox: Inbox<String>) {
//!     while let Incoming::Message(text) = inbox.receive() {
//!         println!("{user}: {text}");
//!     }
//! }
//!
//! let tree = SupervisorSpec {
//!     strategy: Strategy::RestForOne,
//!     intensity: 3,
//!     period: Duration::from_secs(10),
//!     children: vec![
//!         ChildSpec::dynamic_supervisor(
//!             "sessions",
//!             DynamicSupervisorSpec::new(session).restart(Restart::Temporary),
//!         )
//!         .register("sessions"),
//!         ChildSpec::new("acceptor", acceptor, 4000)
//!             .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
//!     ],
//! };
//! let root = SupervisorRef::start_link("chorus", tree).unwrap();
//! println!("restarts so far: {}", root.tree_restarts().unwrap());
//! ```
//!
//! * [`spec`](SupervisorSpec): strategies, restart intensity, restart types,
//!   shutdown, nested and dynamic supervisors.
//! * [`Inbox`] / [`ChildRef`]: a supervised process' mailbox, with the
//!   supervisor's stop request ([`Incoming::Shutdown`]), and a typed handle
//!   to it.
//! * [`SupervisorRef`] / [`DynamicSupervisor`]: starting trees, children at
//!   run time, counts and the restart counter.
//!
//! How a normal exit is told from a crash, and why: see the `child` module
//! source (children report a normal return; crashes arrive as link deaths).

mod child;
mod handle;
mod intensity;
pub mod mail;
mod spec;
mod supervisor;

pub use child::{call, call_while, ChildRef, Inbox, Incoming, ReplyTo};
pub use handle::{
    ChildInfo, Counts, DynamicSupervisor, Error, SupervisorRef, DEFAULT_CALL_TIMEOUT,
};
pub use spec::{
    Backoff, ChildKind, ChildSpec, DynamicSupervisorSpec, Restart, Shutdown, Strategy,
    SupervisorSpec,
};
