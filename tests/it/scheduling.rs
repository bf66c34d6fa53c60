//! `--sched-batch` (node.sched_batch) puts every thread of the server under
//! SCHED_BATCH; without it the default policy stays.

#[cfg(target_os = "linux")]
use crate::support::ServerProcess;

/// The scheduling policy of every thread of `pid`, from /proc.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads");
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("sched")).ok())
        .filter_map(|sched| {
            sched
                .lines()
                .find(|line| line.starts_with("policy"))
                .and_then(|line| line.rsplit(':').next())
                .and_then(|value| value.trim().parse().ok())
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn sched_batch_covers_every_thread_and_is_off_by_default() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().display().to_string();
    let batch = ServerProcess::start(&["--engine", "memory", "--data-dir", &data, "--sched-batch"]);
    let policies = thread_policies(batch.pid());
    assert!(policies.len() > 1, "threads: {policies:?}");
    assert!(
        policies.iter().all(|p| *p == SCHED_BATCH),
        "every thread under SCHED_BATCH: {policies:?}"
    );
    assert!(batch.wait_for_log("SCHED_BATCH"), "the choice is logged");
    drop(batch);

    let default = ServerProcess::start(&["--engine", "memory", "--data-dir", &data]);
    let policies = thread_policies(default.pid());
    assert!(
        policies.iter().all(|p| *p == SCHED_OTHER),
        "default policy: {policies:?}"
    );
}
