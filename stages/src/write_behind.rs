//! Making the next piece of an output on this thread while a thread of
//! its own writes the last one: `resize`'s writes (mostly the kernel's
//! copy into the page cache) take about as long as resampling what they
//! write, and alone they run on one core. The pieces arrive in order, at
//! most one waiting between the two threads, so the file is the one a
//! single thread writes. (`load_subset` writes a tenth as much; the same
//! overlap there saved nothing measurable, BENCHMARKS.md.)

use std::sync::mpsc::{sync_channel, Receiver};

/// Runs `produce` here, handing each piece it makes to the `send` it is
/// given (which answers false once `consume` has stopped), and `consume`
/// on a thread of its own, which receives the pieces in order. Returns
/// `produce`'s error if it failed, else `consume`'s; a panic in `consume`
/// resumes here.
pub fn write_behind<T: Send, E: Send>(
    produce: impl FnOnce(&mut dyn FnMut(T) -> bool) -> Result<(), E>,
    consume: impl FnOnce(Receiver<T>) -> Result<(), E> + Send,
) -> Result<(), E> {
    std::thread::scope(|s| {
        let (pieces, received) = sync_channel(1);
        let consuming = s.spawn(move || consume(received));
        let produced = produce(&mut |piece| pieces.send(piece).is_ok());
        drop(pieces);
        let consumed = consuming.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        produced.and(consumed)
    })
}

#[cfg(test)]
mod tests {
    use super::{write_behind, Receiver};

    /// Every piece arrives, in order; a stopped consumer stops the
    /// producer (its `send` answers false) and its error is returned; a
    /// producer's error comes first.
    #[test]
    fn pieces_arrive_in_order_and_errors_are_returned() {
        let mut got = Vec::new();
        let r: Result<(), String> = write_behind(
            |send| {
                (0..100).for_each(|i| assert!(send(i)));
                Ok(())
            },
            |received| {
                got.extend(received);
                Ok(())
            },
        );
        assert_eq!((r, got), (Ok(()), (0..100).collect()));
        let mut sent = 0;
        let r: Result<(), String> = write_behind(
            |send| {
                while send(sent) {
                    sent += 1;
                }
                Ok(())
            },
            |received| {
                received.iter().take(3).for_each(drop);
                Err("disk full".to_string())
            },
        );
        assert_eq!(r, Err("disk full".to_string()));
        assert!(sent >= 3, "the producer ran until the consumer stopped: {sent}");
        let r: Result<(), String> = write_behind(|_| Err("bad image".to_string()), |received: Receiver<u8>| Err(format!("{} pieces", received.iter().count())));
        assert_eq!(r, Err("bad image".to_string()));
    }
}
