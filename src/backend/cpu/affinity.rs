//! Pinning the pool's threads, one per CPU.
//!
//! A team's threads spin through a call, and a per-step product of a small batch is split so
//! that each thread streams its own slice of the weights from its own core's cache. Left to the
//! scheduler, two of them sometimes share a core for a whole call (on the 2-vCPU development
//! VM some runs of a batch-1 row took twice as long as the others). So when the pool has one
//! thread per CPU the process may run on (as [`Cpu::new`](super::Cpu::new) makes it), thread
//! `i` is pinned to the `i`-th of them. A pool with fewer threads is left to the scheduler, so
//! that several of them (one per model, say) spread over the machine. `RNN_KERNELS_PIN=0` turns
//! pinning off.

/// The CPUs to pin threads `0..threads` to, or `None` (not Linux, turned off, not one thread
/// per allowed CPU, or the affinity cannot be read).
pub(crate) fn pin_plan(threads: usize) -> Option<Vec<usize>> {
    if threads < 2 || std::env::var("RNN_KERNELS_PIN").is_ok_and(|v| v.trim() == "0") {
        return None;
    }
    let cpus = allowed_cpus();
    (cpus.len() == threads).then_some(cpus)
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and sched_getaffinity writes at most
    // its size; CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Pins the calling thread to `cpu`; a failure leaves it unpinned (it only costs speed).
#[cfg(target_os = "linux")]
pub(crate) fn pin_current_thread(cpu: usize) {
    // SAFETY: as in allowed_cpus; CPU_SET writes within the set (cpu < CPU_SETSIZE, as
    // allowed_cpus returned it).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn pin_current_thread(_cpu: usize) {}

#[cfg(test)]
mod tests {
    #[test]
    fn pinned_only_with_one_thread_per_allowed_cpu() {
        assert_eq!(super::pin_plan(1), None, "one thread is never pinned");
        let allowed = super::allowed_cpus();
        for threads in 2..=allowed.len() + 1 {
            match super::pin_plan(threads) {
                Some(cpus) => {
                    assert!(std::env::var("RNN_KERNELS_PIN").map_or(true, |v| v.trim() != "0"));
                    assert_eq!(cpus.len(), threads);
                    assert!(cpus.iter().all(|c| allowed.contains(c)));
                    let mut d = cpus.clone();
                    d.dedup();
                    assert_eq!(d.len(), threads, "distinct CPUs: {cpus:?}");
                }
                None => assert!(
                    threads != allowed.len()
                        || std::env::var("RNN_KERNELS_PIN").is_ok_and(|v| v.trim() == "0")
                        || !cfg!(target_os = "linux")
                ),
            }
        }
    }
}
