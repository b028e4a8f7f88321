//! Sans-IO core of Chorus.
//!
//! Everything here is pure: it takes bytes, events and the current time as
//! arguments and hands back bytes, events and decisions. No lunatic, no
//! sockets, no clocks, no files. The guest processes and the native host are
//! thin shells around these types, which keeps the logic testable natively and
//! fuzzable.

pub mod admission;
pub mod budget;
pub mod caps;
pub mod cluster;
pub mod command;
pub mod config;
pub mod data;
pub mod dedupe;
pub mod deflate;
pub mod drain;
pub mod frame;
pub mod http;
pub mod join;
pub mod json;
pub mod jwt;
pub mod lanes;
pub mod linger;
pub mod metrics;
pub mod modules;
pub mod msg;
pub mod nodelink;
pub mod online;
pub mod outq;
pub mod peak;
pub mod phoenix;
pub mod placement;
pub mod policy;
pub mod presence;
pub mod ratelimit;
pub mod relay;
pub mod ring;
pub mod room;
pub mod selective;
pub mod session;
pub mod snowflake;
pub mod ws;
