//! A bounded scoped worker pool, shared by the HTTP and process-based teachers.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Maps `f` over `items` on at most `max_workers` scoped threads and returns the results in
/// input order.
///
/// Workers pull the next index from a shared counter, so a slow item never holds up the
/// others and no more than `max_workers` calls of `f` run at once. `f` gets the item's index.
pub(crate) fn map_bounded<T, R, F>(items: &[T], max_workers: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &T) -> R + Sync,
{
    let workers = max_workers.max(1).min(items.len());
    if workers <= 1 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(i, item)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                // A panicking `f` is a bug in this crate; re-raise it on the caller's thread.
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::map_bounded;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn map_bounded_keeps_order_and_never_exceeds_the_worker_bound() {
        let items: Vec<u64> = (0..40).collect();
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = map_bounded(&items, 3, |i, &x| {
            let now = live.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Later items finish first, so completion order differs from input order.
            std::thread::sleep(Duration::from_micros(200 * (40 - x)));
            live.fetch_sub(1, Ordering::SeqCst);
            (i as u64) * 10 + x
        });
        assert_eq!(out, (0..40).map(|x| x * 11).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(map_bounded(&[] as &[u8], 4, |_, _| 0).is_empty());
    }
}
