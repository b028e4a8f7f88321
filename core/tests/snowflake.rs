use chorus_core::snowflake::{
    bucket_of, first_id_at, Generator, Id, WorkerIdOutOfRange, BUCKET_WIDTH_MS, CHORUS_EPOCH_MS,
    MAX_WORKER, SEQUENCE_PER_MS,
};
use proptest::prelude::*;

const T0: u64 = CHORUS_EPOCH_MS + 1_000_000;

#[test]
fn epoch_is_2026_01_01_utc() {
    // 56 years from 1970 with 14 leap days (1972..=2024).
    let days = 56 * 365 + 14;
    assert_eq!(CHORUS_EPOCH_MS, days * 86_400_000);
    assert_eq!(BUCKET_WIDTH_MS, 864_000_000);
}

#[test]
fn worker_ids_of_1024_and_more_are_refused() {
    assert!(Generator::new(MAX_WORKER).is_ok());
    assert_eq!(MAX_WORKER, 1023);
    let err = Generator::new(1024).unwrap_err();
    assert_eq!(err, WorkerIdOutOfRange(1024));
    assert_eq!(
        err.to_string(),
        "snowflake worker id 1024 out of range 0..=1023"
    );
}

#[test]
fn ids_carry_time_worker_and_sequence() {
    let mut g = Generator::new(513).unwrap();
    let a = g.next(T0);
    let b = g.next(T0);
    assert_eq!(a.as_u64(), (1_000_000 << 22) | (513 << 12));
    assert_eq!((a.timestamp_ms(), a.worker(), a.sequence()), (T0, 513, 0));
    assert_eq!((b.timestamp_ms(), b.worker(), b.sequence()), (T0, 513, 1));
    let c = g.next(T0 + 5);
    assert_eq!((c.timestamp_ms(), c.sequence()), (T0 + 5, 0));
}

#[test]
fn sequence_overflow_borrows_the_next_millisecond() {
    let mut g = Generator::new(1).unwrap();
    let ids: Vec<Id> = (0..=SEQUENCE_PER_MS).map(|_| g.next(T0)).collect();
    let last_in_ms = ids[usize::from(SEQUENCE_PER_MS) - 1];
    assert_eq!(
        (last_in_ms.timestamp_ms(), last_in_ms.sequence()),
        (T0, 4095)
    );
    let borrowed = ids[usize::from(SEQUENCE_PER_MS)];
    assert_eq!((borrowed.timestamp_ms(), borrowed.sequence()), (T0 + 1, 0));
    // The real clock reaching the borrowed millisecond continues after it.
    let next = g.next(T0 + 1);
    assert_eq!((next.timestamp_ms(), next.sequence()), (T0 + 1, 1));
}

#[test]
fn clock_going_backwards_never_repeats() {
    let mut g = Generator::new(7).unwrap();
    let a = g.next(T0);
    let b = g.next(T0 - 60_000);
    assert!(b > a);
    assert_eq!((b.timestamp_ms(), b.sequence()), (T0, 1));
}

#[test]
fn times_before_the_epoch_count_as_the_epoch() {
    let mut g = Generator::new(0).unwrap();
    let id = g.next(0);
    assert_eq!(id.as_u64(), 0);
    assert_eq!(id.timestamp_ms(), CHORUS_EPOCH_MS);
    assert!(g.next(0) > id);
}

#[test]
fn string_forms_round_trip_and_reject_junk() {
    let id = Id::from_parts(123_456, 9, 42).unwrap();
    let s = id.to_string();
    assert_eq!(s, id.as_u64().to_string());
    assert_eq!(s.parse::<Id>(), Ok(id));
    for junk in ["", "-1", "+1", " 1", "1e3", "18446744073709551616", "abc"] {
        assert!(junk.parse::<Id>().is_err(), "{junk:?}");
    }
    assert!("x".parse::<Id>().unwrap_err().to_string().contains("\"x\""));
}

#[test]
fn serde_uses_decimal_strings() {
    let id = Id::from_u64(u64::MAX - 1); // would lose precision as a JS number
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, "\"18446744073709551614\"");
    assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
    assert_eq!(serde_json::from_str::<Id>("42").unwrap(), Id::from_u64(42));
    assert!(serde_json::from_str::<Id>("\"4x\"").is_err());
    assert!(serde_json::from_str::<Id>("-3").is_err());
}

#[test]
fn from_parts_rejects_fields_that_do_not_fit() {
    assert_eq!(Id::from_parts(1 << 42, 0, 0), None);
    assert_eq!(Id::from_parts(0, 1024, 0), None);
    assert_eq!(Id::from_parts(0, 0, 4096), None);
    assert_eq!(
        Id::from_parts((1 << 42) - 1, 1023, 4095),
        Some(Id::from_u64(u64::MAX))
    );
}

#[test]
fn buckets_are_ten_day_slices_since_the_epoch() {
    let day = 86_400_000;
    let at = |ms: u64| bucket_of(first_id_at(ms), BUCKET_WIDTH_MS);
    assert_eq!(at(CHORUS_EPOCH_MS), 0);
    assert_eq!(at(CHORUS_EPOCH_MS + 10 * day - 1), 0);
    assert_eq!(at(CHORUS_EPOCH_MS + 10 * day), 1);
    assert_eq!(at(CHORUS_EPOCH_MS + 365 * day), 36);
    assert_eq!(bucket_of(Id::from_u64(u64::MAX), 0), (1 << 42) - 1);
}

#[test]
fn first_id_at_bounds_time_range_queries() {
    let mut g = Generator::new(1023).unwrap();
    let before = g.next(T0 - 1);
    let at = g.next(T0);
    assert!(before < first_id_at(T0));
    assert!(at >= first_id_at(T0));
    assert_eq!(first_id_at(T0).timestamp_ms(), T0);
    assert_eq!(first_id_at(0), Id::from_u64(0));
}

proptest! {
    #[test]
    fn ids_strictly_increase_for_any_clock(
        worker in 0u16..=1023,
        start in CHORUS_EPOCH_MS - 1000..CHORUS_EPOCH_MS + (1 << 40),
        steps in prop::collection::vec(-5_000i64..5_000, 1..2_000),
    ) {
        let mut g = Generator::new(worker).unwrap();
        let mut now = start;
        let mut prev = g.next(now);
        for step in steps {
            now = now.saturating_add_signed(step);
            let id = g.next(now);
            prop_assert!(id > prev, "{id} after {prev} at {now}");
            prop_assert_eq!(id.worker(), worker);
            prev = id;
        }
    }

    #[test]
    fn ids_strictly_increase_for_arbitrary_clock_readings(
        nows in prop::collection::vec(any::<u64>(), 1..2_000),
    ) {
        let mut g = Generator::new(77).unwrap();
        let mut prev: Option<Id> = None;
        for now in nows {
            let id = g.next(now);
            prop_assert!(prev.is_none_or(|p| id > p), "{id} after {prev:?} at {now}");
            prev = Some(id);
        }
    }

    #[test]
    fn parts_round_trip(ms in 0u64..(1 << 42), worker in 0u16..=1023, seq in 0u16..4096) {
        let id = Id::from_parts(ms, worker, seq).unwrap();
        prop_assert_eq!(id.since_epoch_ms(), ms);
        prop_assert_eq!(id.timestamp_ms(), ms + CHORUS_EPOCH_MS);
        prop_assert_eq!(id.worker(), worker);
        prop_assert_eq!(id.sequence(), seq);
        prop_assert_eq!(id.to_string().parse::<Id>().unwrap(), id);
    }

    #[test]
    fn bursts_stay_unique(n in 1usize..20_000, now in CHORUS_EPOCH_MS..CHORUS_EPOCH_MS + 1_000_000) {
        let mut g = Generator::new(3).unwrap();
        let ids: Vec<Id> = (0..n).map(|_| g.next(now)).collect();
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
        // Borrowing spends one millisecond per 4096 ids.
        let last = ids[n - 1];
        prop_assert_eq!(last.timestamp_ms(), now + ((n - 1) / 4096) as u64);
    }
}
