//! Per-session state: a value of the program's own type on each session, behind that
//! session's own lock, dropped once the session has closed. It builds on `session` (where the
//! slot lives); `server` drops the value after `on_close`.

use crate::session::Session;

impl Session {
    /// Stores the program's value for this session (a player, a nickname, a parser's
    /// state), replacing the one before (of any type, dropped). Typically set in
    /// [`Handler::on_connect`](crate::Handler::on_connect) and used in `on_packet` with
    /// [`Session::with_state`]. The value is dropped when the session has finished closing,
    /// right after [`Handler::on_close`](crate::Handler::on_close) returns (which still
    /// sees it), however many handles to the session the program keeps; set after that, it
    /// is dropped at once.
    ///
    /// Each session's value sits behind that session's own lock: handlers of different
    /// sessions never wait for each other, and the program needs no
    /// `Mutex<HashMap<SessionId, _>>` of its own.
    ///
    /// A server that remembers each client's name:
    ///
    /// ```
    /// use std::io::{BufRead, BufReader, Write};
    /// use std::net::TcpStream;
    ///
    /// use cport_server::{Config, Delimited, Handler, Server, Session};
    ///
    /// /// What the server knows of one client.
    /// struct Client {
    ///     name: Option<String>,
    /// }
    ///
    /// struct Names;
    ///
    /// impl Handler for Names {
    ///     fn on_connect(&self, session: &Session) {
    ///         session.set_state(Client { name: None });
    ///     }
    ///     fn on_packet(&self, session: &Session, line: &[u8]) {
    ///         let line = String::from_utf8_lossy(line);
    ///         let reply = session
    ///             .with_state(|c: &mut Client| match line.strip_prefix("NAME ") {
    ///                 Some(name) => {
    ///                     c.name = Some(name.to_string());
    ///                     "OK\n".to_string()
    ///                 }
    ///                 None => format!("you are {:?}\n", c.name.as_deref().unwrap_or("?")),
    ///             })
    ///             .expect("set in on_connect");
    ///         let _ = session.send(reply);
    ///     }
    /// }
    ///
    /// let server = Server::start(Config::default(), Delimited::lines(256), Names)?;
    /// let mut a = TcpStream::connect(server.local_addr())?;
    /// let mut b = TcpStream::connect(server.local_addr())?;
    /// let (mut ra, mut rb) = (BufReader::new(a.try_clone()?), BufReader::new(b.try_clone()?));
    /// let mut line = String::new();
    /// a.write_all(b"NAME alice\n")?;
    /// ra.read_line(&mut line)?;
    /// b.write_all(b"WHO\n")?;
    /// rb.read_line(&mut line)?;
    /// a.write_all(b"WHO\n")?;
    /// ra.read_line(&mut line)?;
    /// assert_eq!(line, "OK\nyou are \"?\"\nyou are \"alice\"\n");
    /// # drop((a, b));
    /// # server.shutdown(std::time::Duration::from_secs(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_state<T: Send + 'static>(&self, value: T) {
        let mut slot = self.state_slot().lock();
        let old = if slot.closed {
            None
        } else {
            slot.value.replace(Box::new(value))
        };
        // The old value (or the refused new one, dropped on return) runs its `Drop` outside
        // the lock.
        drop(slot);
        drop(old);
    }

    /// Runs `f` on this session's value if it is a `T` (see [`Session::set_state`]), and
    /// returns what `f` returns; `None` if no value of that type is set. `f` runs under the
    /// session's own lock: it must not call `with_state`, `set_state` or `take_state` on the
    /// same session (that would wait for ever); sending, closing and other sessions' state
    /// are fine.
    pub fn with_state<T: Send + 'static, R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut slot = self.state_slot().lock();
        let value = slot.value.as_mut()?.downcast_mut::<T>()?;
        Some(f(value))
    }

    /// Takes this session's value out if it is a `T`; `None` (and the value stays) if not.
    pub fn take_state<T: Send + 'static>(&self) -> Option<T> {
        let mut slot = self.state_slot().lock();
        if !slot.value.as_ref()?.is::<T>() {
            return None;
        }
        let value = slot.value.take()?.downcast::<T>().ok()?;
        Some(*value)
    }

    /// The session finished closing and the handler's `on_close` returned: drop its value
    /// (outside the lock), and any set from now on.
    pub(crate) fn drop_state(&self) {
        let value = {
            let mut slot = self.state_slot().lock();
            slot.closed = true;
            slot.value.take()
        };
        drop(value);
    }
}
