//! The first flight (hedging, `proxy::flight`): the client's first bytes,
//! kept until the master answers so that they can be replayed to another
//! master (`Replay`: at most `CAP` bytes, in buffers lent from the worker's
//! pool and given back when the flight is over), and the master's first
//! bytes (`Answer`), read once and handed to the copy, which writes them
//! to the client before anything else.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::pool::{self, BUF_SIZE, Buf};

/// Two pool buffers: a TLS ClientHello is a few hundred bytes to a few
/// kilobytes; a client that sends more before any answer is committed to
/// its master.
const BUFS: usize = 2;

#[derive(Default)]
pub(crate) struct Replay {
    bufs: [Option<Box<Buf>>; BUFS],
    len: usize,
}

impl Replay {
    pub(crate) const CAP: usize = BUFS * BUF_SIZE;

    /// Bytes kept.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// No room left: the flight can no longer be replayed whole.
    pub(crate) fn is_full(&self) -> bool {
        self.len == Self::CAP
    }

    /// One non-blocking read from `from` into the free room (tokio's read
    /// readiness is cleared on WouldBlock). `Ok(0)` is the client's EOF.
    /// A buffer is lent only for bytes that are there: one taken for a
    /// read that found none goes back at once.
    pub(crate) fn read_from(&mut self, from: &TcpStream) -> io::Result<usize> {
        let (i, at) = (self.len / BUF_SIZE, self.len % BUF_SIZE);
        let Some(slot) = self.bufs.get_mut(i) else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let buf = slot.get_or_insert_with(pool::take);
        let room = buf.len() - at;
        let read = from.try_read(&mut buf[at..]);
        match read {
            Ok(n) if n > 0 => {
                self.len += n;
                if n < room {
                    // Drained: spare the read that would say EAGAIN.
                    super::clear_read_readiness(from);
                }
            }
            _ if at == 0 => {
                if let Some(b) = slot.take() {
                    pool::give(b);
                }
            }
            _ => {}
        }
        read
    }

    /// Writes the kept bytes from offset `from` on to `to`.
    pub(crate) async fn write_to(&self, mut from: usize, to: &mut TcpStream) -> io::Result<()> {
        while from < self.len {
            let (i, at) = (from / BUF_SIZE, from % BUF_SIZE);
            let end = (self.len - i * BUF_SIZE).min(BUF_SIZE);
            let Some(buf) = &self.bufs[i] else {
                return Err(io::ErrorKind::InvalidData.into());
            };
            to.write_all(&buf[at..end]).await?;
            from = i * BUF_SIZE + end;
        }
        Ok(())
    }
}

/// A master's first bytes, lent from the pool until the copy wrote them.
pub(crate) struct Answer {
    pub(super) buf: Box<Buf>,
    /// At most `BUF_SIZE`.
    pub(super) len: u32,
}

impl Answer {
    /// One non-blocking read from `from`: `Ok(Some)` with bytes, `Ok(None)`
    /// at EOF (the buffer goes straight back), WouldBlock when none came
    /// after all (tokio's readiness cleared).
    pub(crate) fn read_from(from: &TcpStream) -> io::Result<Option<Answer>> {
        let mut buf = pool::take();
        match from.try_read(&mut buf[..]) {
            Ok(0) => {
                pool::give(buf);
                Ok(None)
            }
            Ok(n) => {
                if n < buf.len() {
                    super::clear_read_readiness(from);
                }
                // n <= BUF_SIZE, which fits (see `Held`).
                Ok(Some(Answer { buf, len: n as u32 }))
            }
            Err(e) => {
                pool::give(buf);
                Err(e)
            }
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        for b in self.bufs.iter_mut().filter_map(Option::take) {
            pool::give(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// An answer is read whole into a lent buffer; EOF is no answer.
    #[tokio::test]
    async fn an_answer_is_what_the_master_sent_and_eof_is_none() {
        let (mut master, near) = pair().await;
        master.write_all(b"ServerHello").await.unwrap();
        near.readable().await.unwrap();
        let a = Answer::read_from(&near).unwrap().expect("bytes");
        assert_eq!(&a.buf[..a.len as usize], b"ServerHello");
        drop(master);
        let eof = loop {
            near.readable().await.unwrap();
            match Answer::read_from(&near) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break r.unwrap(),
            }
        };
        assert!(eof.is_none());
    }

    /// Kept bytes replay whole, across both buffers, from any offset; the
    /// buffers go back to the pool when the flight ends.
    #[tokio::test]
    async fn keeps_up_to_its_cap_and_replays_from_any_offset() {
        let (mut client, near) = pair().await;
        let sent: Vec<u8> = (0..Replay::CAP + 100).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move { client.write_all(&sent).await.unwrap() })
        };
        let free = pool::free_len();
        let mut r = Replay::default();
        while !r.is_full() {
            near.readable().await.unwrap();
            match r.read_from(&near) {
                Ok(n) => assert!(n > 0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(r.len(), Replay::CAP);
        assert!(r.read_from(&near).is_err(), "read past the cap");
        for from in [0, 10, BUF_SIZE, BUF_SIZE + 7] {
            let (mut out, mut far) = pair().await;
            r.write_to(from, &mut out).await.unwrap();
            drop(out);
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, sent[from..Replay::CAP], "replay from {from}");
        }
        drop(r);
        assert_eq!(pool::free_len(), free + BUFS, "buffers not given back");
        drop(near);
        let _ = writer.await;
    }
}
