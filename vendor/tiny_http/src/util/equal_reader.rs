use std::io::Read;
use std::io::Result as IoResult;
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the number of bytes left is sent through
/// `last_read_signal`, and the connection skips them (see `ClientConnection`).
///
/// Local patch (PATCHES.md, 4): the destructor used to read the rest itself into
/// `vec![0; remaining]`, so `Content-Length: 1000000000000` aborted the process on a
/// failed allocation, and it did so on the worker thread that dropped the request, which
/// a stalled client then held. Now it reads nothing: the connection's own thread skips
/// the rest, through a small buffer and within a bound, or closes the connection.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    // `Ok(n)`: `n` bytes of the body are still unread. `Err`: a read failed (a timeout, a
    // reset), so where the body ends is unknown and the connection must close.
    last_read_signal: Sender<IoResult<usize>>,
    failed: Option<std::io::ErrorKind>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize) -> (EqualReader<R>, Receiver<IoResult<usize>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            failed: None,
        };

        (r, rx)
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    self.failed = Some(e.kind());
                }
                Err(e)
            }
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        let left = match self.failed {
            Some(kind) => Err(std::io::Error::new(
                kind,
                "the request body could not be read",
            )),
            None => Ok(self.size),
        };
        self.last_read_signal.send(left).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, left) = EqualReader::new(org_reader.by_ref(), 5);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
            drop(equal_reader);
            // The rest is reported to the connection, which skips it.
            assert_eq!(left.recv().unwrap().unwrap(), 4);
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, "ello world");
    }
}
