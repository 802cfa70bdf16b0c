//! The controller's invariants over random event sequences, and the seed's bug as a sequence.

use proptest::prelude::*;

use super::*;

const MARKS: Watermarks = Watermarks { high: 1000, low: 250 };

/// An abstract step, turned into a valid event against the controller's current state.
#[derive(Debug, Clone)]
enum Op {
    Start(usize),
    Queue(usize, u64),
    /// Drain this share (in percent) of what the inbox holds.
    Drain(usize, u8),
    Gone(usize),
    Early,
    End,
    Done,
    SessionEnd,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1usize..5).prop_map(Op::Start),
        8 => (0usize..5, 1u64..700).prop_map(|(i, b)| Op::Queue(i, b)),
        8 => (0usize..5, 1u8..=100).prop_map(|(i, p)| Op::Drain(i, p)),
        1 => (0usize..5).prop_map(Op::Gone),
        1 => Just(Op::Early),
        2 => Just(Op::End),
        1 => Just(Op::Done),
        1 => Just(Op::SessionEnd),
    ]
}

fn event_for(flow: &FlowController, op: &Op) -> Option<FlowEvent> {
    let n = flow.inboxes.len();
    Some(match *op {
        Op::Start(inboxes) => FlowEvent::MessageStart { inboxes },
        Op::Queue(i, bytes) if i < n => FlowEvent::Queued { inbox: i, bytes },
        Op::Drain(i, pct) if i < n => FlowEvent::Drained { inbox: i, bytes: flow.queued()[i] * pct as u64 / 100 },
        Op::Gone(i) if i < n => FlowEvent::InboxGone { inbox: i },
        Op::Early => FlowEvent::EarlyVerdict,
        Op::End => FlowEvent::EndOfMessage,
        Op::Done => FlowEvent::MessageDone,
        Op::SessionEnd => FlowEvent::SessionEnd,
        _ => return None,
    })
}

fn check_invariants(flow: &FlowController, event: FlowEvent) {
    let paused = matches!(flow.reader(), Reader::Paused);
    // 1. paused ⇒ receiving, and live inboxes hold bytes (above the low watermark).
    if paused {
        assert_eq!(flow.phase(), Phase::Receiving);
        assert!(flow.live_queued() > MARKS.low, "paused with {} live bytes", flow.live_queued());
    }
    // 2. pauses − resumes ∈ {0, 1} and equals the paused state.
    assert_eq!(flow.pauses() - flow.resumes(), paused as u64);
    // 3. never paused after end-of-message, an early verdict or the session's end.
    if matches!(
        event,
        FlowEvent::EndOfMessage | FlowEvent::EarlyVerdict | FlowEvent::SessionEnd | FlowEvent::MessageDone
    ) {
        assert!(!paused, "paused after {event:?}");
    }
    // Hysteresis: reading in the receiving phase ⇒ below the high watermark.
    if !paused && flow.phase() == Phase::Receiving {
        assert!(flow.live_queued() < MARKS.high);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_event_order(ops in prop::collection::vec(op(), 1..200)) {
        let mut flow = FlowController::new(MARKS);
        for op in &ops {
            let Some(event) = event_for(&flow, op) else { continue };
            let before = flow.reader();
            let result = flow.handle(event);
            if flow.phase() == Phase::Closed && matches!(result, Err(FlowError::AfterSessionEnd(_))) {
                continue;
            }
            let action = result.expect("valid event");
            // Actions are exactly the reader's transitions.
            match (before, flow.reader(), action) {
                (Reader::Reading, Reader::Paused, Some(FlowAction::Pause)) => {}
                (Reader::Paused, Reader::Reading, Some(FlowAction::Resume)) => {}
                (a, b, None) => prop_assert_eq!(
                    std::mem::discriminant(&a), std::mem::discriminant(&b)
                ),
                other => prop_assert!(false, "unexpected transition {:?}", other),
            }
            check_invariants(&flow, event);
        }
        // 3 (again): at session end the reader is released and the counters balance.
        if flow.phase() != Phase::Closed {
            flow.handle(FlowEvent::SessionEnd).unwrap();
        }
        prop_assert_eq!(flow.reader(), Reader::Reading);
        prop_assert_eq!(flow.pauses(), flow.resumes());
    }

    /// End-of-message before, between and after the final drains: always released at once.
    #[test]
    fn end_of_message_anywhere_around_the_last_drain(chunks in prop::collection::vec(1u64..600, 1..20), end_at in 0usize..40) {
        let mut flow = FlowController::new(MARKS);
        flow.handle(FlowEvent::MessageStart { inboxes: 2 }).unwrap();
        for &chunk in &chunks {
            flow.handle(FlowEvent::Queued { inbox: 0, bytes: chunk }).unwrap();
        }
        let mut drains: Vec<FlowEvent> = chunks.iter().map(|&bytes| FlowEvent::Drained { inbox: 0, bytes }).collect();
        drains.insert(end_at.min(drains.len()), FlowEvent::EndOfMessage);
        for event in drains {
            flow.handle(event).unwrap();
            check_invariants(&flow, event);
        }
        prop_assert_eq!(flow.reader(), Reader::Reading);
        prop_assert_eq!(flow.pauses(), flow.resumes());
        flow.handle(FlowEvent::MessageDone).unwrap();
        flow.handle(FlowEvent::SessionEnd).unwrap();
        prop_assert_eq!(flow.pauses(), flow.resumes());
    }
}

#[test]
fn seed_bug_final_chunk_crosses_high_water_then_end_of_message_then_drain() {
    // OpenSMTPD 6.1: the last chunk paused the session, end-of-message came, the low-water
    // event came after it and the resume was skipped. Here the resume comes with end-of-message.
    let mut flow = FlowController::new(MARKS);
    flow.handle(FlowEvent::MessageStart { inboxes: 3 }).unwrap();
    assert_eq!(flow.handle(FlowEvent::Queued { inbox: 0, bytes: 600 }).unwrap(), None);
    assert_eq!(flow.handle(FlowEvent::Queued { inbox: 1, bytes: 500 }).unwrap(), Some(FlowAction::Pause));
    assert_eq!(flow.handle(FlowEvent::EndOfMessage).unwrap(), Some(FlowAction::Resume));
    assert_eq!(flow.handle(FlowEvent::Drained { inbox: 0, bytes: 600 }).unwrap(), None);
    assert_eq!(flow.handle(FlowEvent::Drained { inbox: 1, bytes: 500 }).unwrap(), None);
    assert_eq!((flow.pauses(), flow.resumes()), (1, 1));
    flow.handle(FlowEvent::MessageDone).unwrap();
    // The next message on the same session pauses and resumes normally.
    flow.handle(FlowEvent::MessageStart { inboxes: 3 }).unwrap();
    assert_eq!(flow.handle(FlowEvent::Queued { inbox: 2, bytes: 1000 }).unwrap(), Some(FlowAction::Pause));
    assert_eq!(flow.handle(FlowEvent::Drained { inbox: 2, bytes: 700 }).unwrap(), None, "hysteresis: 300 > low");
    assert_eq!(flow.handle(FlowEvent::Drained { inbox: 2, bytes: 50 }).unwrap(), Some(FlowAction::Resume));
    assert_eq!((flow.pauses(), flow.resumes()), (2, 2));
}

#[test]
fn dead_stage_releases_the_reader() {
    let mut flow = FlowController::new(MARKS);
    flow.handle(FlowEvent::MessageStart { inboxes: 2 }).unwrap();
    assert!(matches!(flow.handle(FlowEvent::Queued { inbox: 1, bytes: 2000 }).unwrap(), Some(FlowAction::Pause)));
    assert_eq!(flow.handle(FlowEvent::InboxGone { inbox: 1 }).unwrap(), Some(FlowAction::Resume));
    // Bytes sent to a gone inbox count for nothing.
    assert_eq!(flow.handle(FlowEvent::Queued { inbox: 1, bytes: 5000 }).unwrap(), None);
}

#[test]
fn invalid_events_are_typed_errors() {
    let mut flow = FlowController::new(MARKS);
    assert_eq!(flow.handle(FlowEvent::Queued { inbox: 0, bytes: 1 }), Err(FlowError::UnknownInbox(0)));
    flow.handle(FlowEvent::MessageStart { inboxes: 1 }).unwrap();
    flow.handle(FlowEvent::Queued { inbox: 0, bytes: 10 }).unwrap();
    assert_eq!(
        flow.handle(FlowEvent::Drained { inbox: 0, bytes: 11 }),
        Err(FlowError::Overdrained { inbox: 0, bytes: 11, held: 10 })
    );
    flow.handle(FlowEvent::SessionEnd).unwrap();
    assert!(matches!(flow.handle(FlowEvent::EndOfMessage), Err(FlowError::AfterSessionEnd(_))));
}
