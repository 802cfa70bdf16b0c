//! What an idle gateway costs: the wasm epoch clock (the thread behind every filter's CPU limit)
//! parks soon after the last guest call ended, and still bounds a filter that spins.

mod support;

use std::time::Duration;

use support::{message, wasm_stage, Gateway};

/// Voluntary context switches of the gateway's thread called `name`: each is a wake-up.
fn wakeups(gateway: &Gateway, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", gateway.pid())).expect("the gateway's threads");
    let task = tasks
        .map(|entry| entry.unwrap().path())
        .find(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name))
        .unwrap_or_else(|| panic!("the gateway has no thread {name}"));
    let status = std::fs::read_to_string(task.join("status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_epoch_clock_sleeps_while_no_filter_runs_and_still_stops_a_spinning_one() {
    let stages = format!(
        "{}{}",
        wasm_stage("eicar", "eicar", "", ""),
        wasm_stage("faults", "faults", "cpu_limit = \"200ms\"", "mode = \"loop\"\nat = \"end\"")
    );
    let gateway = Gateway::builder().section(&stages).start();
    let mut client = gateway.connect();
    client.hello();
    // Both filters run, the second one until its CPU limit: the clock ticked for that.
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("spin", 20_000));
    assert_eq!(reply.code, 451, "{}", reply.text());
    assert!(gateway.wait_for_log("stage failed").contains("CPU limit"), "{}", gateway.log());
    // Idle now (the session open, no transaction): the clock parks once it saw no call for its
    // linger (100 ticks), and then does not wake at all. The window only has to be long enough
    // for a 1 ms clock to show; a parked one is still at 0 after it.
    let parked = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = wakeups(&gateway, "sluice-epoch");
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = wakeups(&gateway, "sluice-epoch");
        if now == last {
            break;
        }
        assert!(std::time::Instant::now() < parked, "the epoch clock never parked after the calls ended");
        last = now;
    }
    let before = wakeups(&gateway, "sluice-epoch");
    std::thread::sleep(Duration::from_millis(300));
    client.cmd("NOOP", 250);
    let idle = wakeups(&gateway, "sluice-epoch") - before;
    assert!(idle <= 1, "the epoch clock woke {idle} times in 300 ms of idleness");
    // And it starts again for the next call.
    let reply = client.send_message("a@client.test", &["b@dest.test"], &message("spin again", 20_000));
    assert_eq!(reply.code, 451, "{}", reply.text());
    assert!(wakeups(&gateway, "sluice-epoch") - before > 50, "the clock did not tick through a 200 ms call");
}
