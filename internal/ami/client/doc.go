// Package client is the guard's AMI client: one logged-in session to the
// Asterisk Manager Interface, kept up for as long as the Client lives.
//
// What it does, and why:
//
//   - It reads with the project's [ami.Reader]: no allocation per message,
//     repeated keys kept, messages up to 64 KiB whole (a long caller name
//     does not split a line), anything malformed or oversized skipped and
//     counted, the stream going on.
//   - Events are handed, on the reader goroutine, to Options.Handler, which
//     must not block: the reader is never held up by whoever consumes the
//     events, and Asterisk, which drops a session it cannot write to within
//     its writetimeout, never sees a slow reader. Options.Skip drops the
//     events the owner does not want by name before the handler sees them.
//   - Replies and list replies (`EventList: start` ... the `*Complete`
//     event) are routed by ActionID to the action waiting for them; any
//     number of actions may be in flight on the session (Asterisk answers a
//     session's actions one after another). A reply no action waits for any
//     more is dropped and counted.
//   - Login is by MD5 challenge unless told otherwise, so the secret never
//     crosses the network; the event mask is sent with the Login; every
//     header value is checked before anything is written (ami.ErrUnsafe).
//     TLS (tls://host:port) and IPv6 literals are supported.
//   - Liveness is judged from data arriving: a Ping only after the line has
//     been idle, its reply read by the same reader like any other message,
//     and the connection declared dead only when nothing at all arrived
//     (and nothing waits unread in the socket) for the action timeout
//     after it. A busy reader that is behind is never declared dead.
//   - Reconnects back off exponentially with jitter up to a cap; the dial,
//     the banner and the login have deadlines; closing the Client (or its
//     context ending) unblocks every read.
//   - Every way the link fails is logged once when it starts, at warn or
//     error with its cause, and once at info when it ends; the state is
//     exposed as a typed [Status].
//   - Close stops every goroutine the Client started.
package client
