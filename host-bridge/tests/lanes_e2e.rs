//! Lanes of a socket's outbound queue under real backpressure (docs/ROOMS.md,
//! "Rooms and lanes"): a client with a tiny TCP receive window stops reading
//! while a room is busy; its outlet keeps every chat message, keeps only the
//! latest audio state and counts reactions, while a well-behaved client in
//! the same room gets everything. A chat lane that overflows closes only the
//! slow socket, with 1008 `slow_consumer`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_core::phoenix::{Outbound, Payload, Vsn};
use common::{Client, Event, Node};
use serde_json::{json, Value};

const EMOJIS: [&str; 3] = ["🔥", "❤️", "👏"];
/// Generous bound for every "until" wait.
const WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A client whose receive buffer is set tiny before the connect, so the TCP
/// window stays small: once it stops reading, the node's writes block soon.
fn connect_small_window(node: &Node, vsn: Vsn) -> Client {
    let addr: SocketAddr = format!("127.0.0.1:{}", node.port).parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("create a socket");
    socket.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let url = node.ws_url("/realtime/v1/websocket", vsn.as_str());
    Client::handshake(&url, socket.into(), vsn)
        .unwrap_or_else(|e| panic!("handshake: {e:?}\n--- node stderr\n{}", node.logs()))
}

/// A user broadcast as a client received it.
struct Seen {
    topic: String,
    event: String,
    payload: Value,
}

/// Everything one client received on a room's lanes.
#[derive(Default, Debug)]
struct Received {
    /// Individual reactions, per emoji.
    reactions: BTreeMap<String, u64>,
    /// The `counts` of every `reaction_counts` broadcast.
    counts_frames: Vec<BTreeMap<String, u64>>,
    /// `seq` of the chat messages, in arrival order.
    chat: Vec<u64>,
    /// `position_ms` of the playbacks, in arrival order.
    audio: Vec<u64>,
}

impl Received {
    fn add(&mut self, seen: Seen) {
        let topic = seen.topic.as_str();
        match seen.event.as_str() {
            "reaction" if topic.ends_with(":reactions") => {
                let emoji = seen.payload["emoji"].as_str().expect("emoji").to_string();
                *self.reactions.entry(emoji).or_default() += 1;
            }
            "reaction_counts" if topic.ends_with(":reactions") => {
                assert_eq!(seen.payload["aggregated"], json!(true), "{}", seen.payload);
                let counts = serde_json::from_value(seen.payload["counts"].clone())
                    .unwrap_or_else(|e| panic!("counts {}: {e}", seen.payload));
                self.counts_frames.push(counts);
            }
            "message" if topic.ends_with(":chat") => {
                self.chat.push(seen.payload["seq"].as_u64().expect("seq"))
            }
            "playback" if topic.ends_with(":audio") => self
                .audio
                .push(seen.payload["position_ms"].as_u64().expect("position_ms")),
            other => panic!("unexpected broadcast {other} on {topic}: {}", seen.payload),
        }
    }

    /// Reactions received per emoji, individually or counted.
    fn reactions_total(&self) -> BTreeMap<String, u64> {
        let mut total = self.reactions.clone();
        for frame in &self.counts_frames {
            for (k, n) in frame {
                *total.entry(k.clone()).or_default() += n;
            }
        }
        total
    }

    fn reaction_count(&self) -> u64 {
        self.reactions_total().values().sum()
    }
}

fn seen(msg: Outbound) -> Option<Seen> {
    match msg {
        Outbound::UserBroadcast(b) => match b.payload {
            Payload::Json(payload) => Some(Seen {
                topic: b.topic,
                event: b.event,
                payload,
            }),
            Payload::Binary(b) => panic!("binary broadcast {b:?}"),
        },
        _ => None,
    }
}

/// Reads `client` on a thread until `stop` is set, handing every user
/// broadcast over; the client comes back from the join handle.
fn spawn_reader(
    mut client: Client,
    stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<Seen>, thread::JoinHandle<Client>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match client.recv_event(Duration::from_millis(100)) {
                Some(Event::Msg(msg)) => {
                    if let Some(s) = seen(msg) {
                        let _ = tx.send(s);
                    }
                }
                Some(Event::Close(c)) => panic!("the well-behaved client was closed: {c:?}"),
                None => {}
            }
        }
        client
    });
    (rx, handle)
}

/// Takes what the reader handed over until `done` holds, panicking after
/// [`WAIT`].
fn collect_until(
    rx: &mpsc::Receiver<Seen>,
    into: &mut Received,
    what: &str,
    done: impl Fn(&Received) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(into) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what} not within {WAIT:?}; have {into:?}");
        if let Ok(s) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
            into.add(s);
        }
    }
}

fn room_topics(room: &str) -> [String; 3] {
    ["audio", "chat", "reactions"].map(|lane| format!("realtime:room:{room}:{lane}"))
}

#[test]
fn a_slow_socket_keeps_chat_replaces_audio_and_aggregates_reactions() {
    let node = Node::start_with(&[
        ("CHORUS_LIMITS_CLIENT_MESSAGES_PER_SECOND", "100000"),
        ("CHORUS_LIMITS_CLIENT_BURST", "100000"),
        ("CHORUS_LIMITS_REACTION_QUEUE_FRAMES", "1000"),
        // The flood would put the reactions channel in peak mode, whose
        // per-period counts would hide the outlet's own aggregation.
        ("CHORUS_ROOMS_PEAK_ENTER_PER_S", "100000000"),
        ("CHORUS_ROOMS_PEAK_EXIT_PER_S", "1"),
    ]);
    let [audio, chat, reactions] = room_topics("lanes1");
    let put = node.http(
        "PUT",
        "/realtime/v1/api/rooms/lanes1",
        &[("Content-Type", "application/json")],
        br#"{"host": "dj"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.body_text());

    // The room host publishes everything (and is not sent its own frames).
    let mut dj = node.connect(Vsn::V2);
    let dj_audio = dj.join(
        &audio,
        json!({"presence": {"key": "dj"}, "broadcast": {"ack": true}}),
    );
    let dj_chat = dj.join(&chat, json!({"broadcast": {"ack": true}}));
    let dj_reactions = dj.join(&reactions, json!({}));

    let mut slow = connect_small_window(&node, Vsn::V2);
    let mut good = node.connect(Vsn::V1);
    for topic in [&audio, &chat, &reactions] {
        slow.join(topic, json!({}));
        good.join(topic, json!({}));
    }
    // From here on `slow` does not read its socket.
    let stop = Arc::new(AtomicBool::new(false));
    let (good_rx, good_reader) = spawn_reader(good, stop.clone());
    let mut good_got = Received::default();

    // Reactions, in rounds the well-behaved client fully receives (so its
    // own queue never nears the bound), until the slow socket's outlet
    // counts reactions instead of queueing them.
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0u64;
    loop {
        for _ in 0..200 {
            let emoji = EMOJIS[(n % 3) as usize];
            dj.broadcast(
                &dj_reactions,
                &reactions,
                "reaction",
                json!({ "emoji": emoji }),
            );
            *sent.entry(emoji.to_string()).or_default() += 1;
            n += 1;
        }
        collect_until(&good_rx, &mut good_got, "a round of reactions", |r| {
            r.reaction_count() == n
        });
        if node.metric("chorus_reactions_aggregated_total") > 0 {
            break;
        }
        assert!(
            n < 200_000,
            "no reaction was aggregated after {n} reactions"
        );
    }

    // Playbacks and chat while the slow socket is still blocked; each is
    // acknowledged once fanned out, so all are queued when the loops end.
    const PLAYBACKS: u64 = 10;
    const CHATS: u64 = 20;
    for i in 0..PLAYBACKS {
        let payload = json!({"track": "t1", "position_ms": i * 1000, "playing": true, "taken_at_ms": now_ms()});
        let r = dj.broadcast(&dj_audio, &audio, "playback", payload);
        assert_eq!(dj.reply(&r).0, "ok", "playback {i}");
    }
    for seq in 0..CHATS {
        let r = dj.broadcast(&dj_chat, &chat, "message", json!({ "seq": seq }));
        assert_eq!(dj.reply(&r).0, "ok", "chat {seq}");
    }
    collect_until(&good_rx, &mut good_got, "audio and chat", |r| {
        r.audio.len() as u64 == PLAYBACKS && r.chat.len() as u64 == CHATS
    });
    assert!(node.metric("chorus_audio_frames_replaced_total") > 0);

    // The slow client reads everything now.
    let last_position = (PLAYBACKS - 1) * 1000;
    let mut slow_got = Received::default();
    let deadline = Instant::now() + WAIT;
    while slow_got.chat.len() < CHATS as usize
        || slow_got.audio.last() != Some(&last_position)
        || slow_got.reaction_count() < n
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the slow client did not get everything: {slow_got:?}"
        );
        match slow.recv_event(left) {
            Some(Event::Msg(msg)) => {
                if let Some(s) = seen(msg) {
                    slow_got.add(s);
                }
            }
            Some(Event::Close(c)) => panic!("slow client closed ({c:?}); got {slow_got:?}"),
            None => {}
        }
    }
    let expected_chat: Vec<u64> = (0..CHATS).collect();
    assert_eq!(slow_got.chat, expected_chat, "chat complete and in order");
    assert!(
        (slow_got.audio.len() as u64) < PLAYBACKS,
        "unwritten playbacks were replaced: {:?}",
        slow_got.audio
    );
    assert!(
        slow_got.audio.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        slow_got.audio
    );
    assert_eq!(
        slow_got.counts_frames.len(),
        1,
        "one reaction_counts frame: {:?}",
        slow_got.counts_frames
    );
    let counted: u64 = slow_got.counts_frames[0].values().sum();
    assert!(counted > 0);
    assert_eq!(
        slow_got.reactions_total(),
        sent,
        "individual plus counted reactions add up to what was sent"
    );
    // Only the slow socket aggregated.
    assert_eq!(
        node.metric("chorus_reactions_aggregated_total"),
        counted as i64
    );

    // The well-behaved client got every frame, individually and in order.
    stop.store(true, Ordering::Relaxed);
    let mut good = good_reader.join().expect("good reader");
    while let Ok(s) = good_rx.try_recv() {
        good_got.add(s);
    }
    assert_eq!(good_got.reactions, sent);
    assert!(good_got.counts_frames.is_empty());
    assert_eq!(good_got.chat, expected_chat);
    let all_positions: Vec<u64> = (0..PLAYBACKS).map(|i| i * 1000).collect();
    assert_eq!(good_got.audio, all_positions);
    good.heartbeat();
    slow.heartbeat();
    assert_eq!(node.metric("chorus_slow_consumers_total"), 0);
}

#[test]
fn chat_overflow_closes_only_the_slow_socket_with_1008() {
    let node = Node::start_with(&[
        ("CHORUS_LIMITS_CLIENT_MESSAGES_PER_SECOND", "100000"),
        ("CHORUS_LIMITS_CLIENT_BURST", "100000"),
        ("CHORUS_LIMITS_OUTLET_QUEUE_FRAMES", "16"),
        ("CHORUS_ROOMS_PEAK_ENTER_PER_S", "100000000"),
        ("CHORUS_ROOMS_PEAK_EXIT_PER_S", "1"),
    ]);
    let chat = "realtime:room:lanes2:chat";
    let mut publisher = node.connect(Vsn::V2);
    let pub_ref = publisher.join(chat, json!({}));
    let mut slow = connect_small_window(&node, Vsn::V2);
    slow.join(chat, json!({}));
    let mut good = node.connect(Vsn::V2);
    good.join(chat, json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let (good_rx, good_reader) = spawn_reader(good, stop.clone());
    let mut good_got = Received::default();

    // Rounds of 8 (half the bound) that the well-behaved client receives
    // before the next, until the slow socket's chat lane overflows.
    let pad = "x".repeat(2000);
    let mut n = 0u64;
    while node.metric("chorus_slow_consumers_total") == 0 {
        for _ in 0..8 {
            publisher.broadcast(&pub_ref, chat, "message", json!({"seq": n, "pad": pad}));
            n += 1;
        }
        collect_until(&good_rx, &mut good_got, "a round of chat", |r| {
            r.chat.len() as u64 == n
        });
        assert!(
            n < 50_000,
            "the slow socket was not closed after {n} messages"
        );
    }

    // The slow client reads what was written before the close, in order
    // and without gaps, then the 1008 close.
    let mut slow_got = Received::default();
    let deadline = Instant::now() + WAIT;
    let close = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no close frame; got {slow_got:?}");
        match slow.recv_event(left) {
            Some(Event::Msg(msg)) => {
                if let Some(s) = seen(msg) {
                    slow_got.add(s);
                }
            }
            Some(Event::Close(c)) => break c,
            None => {}
        }
    };
    assert_eq!(close, Some((1008, "slow_consumer".to_string())));
    let prefix: Vec<u64> = (0..slow_got.chat.len() as u64).collect();
    assert_eq!(slow_got.chat, prefix, "no message silently dropped");
    assert!((slow_got.chat.len() as u64) < n);

    // The other client is unharmed: it got everything and still works.
    stop.store(true, Ordering::Relaxed);
    let mut good = good_reader.join().expect("good reader");
    while let Ok(s) = good_rx.try_recv() {
        good_got.add(s);
    }
    assert_eq!(good_got.chat, (0..n).collect::<Vec<_>>());
    good.heartbeat();
    publisher.broadcast(&pub_ref, chat, "message", json!({"seq": n}));
    assert_eq!(good.recv_broadcast(chat, "message")["seq"], json!(n));
    assert_eq!(node.metric("chorus_slow_consumers_total"), 1);
}
