package client

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
)

// conn is one connection to Asterisk.
type conn struct {
	net.Conn          // as dialled, wrapped in TLS when asked
	tcp      net.Conn // the socket under it, for the unread byte count
	rd       *ami.Reader

	// at is when the last read returned data (the reader goroutine's);
	// lastRead is the same in Unix ns for the keepalive, and waiting is
	// when the reader started waiting in Read (0 while it is not: it is
	// busy with what it read).
	at       time.Time
	lastRead atomic.Int64
	waiting  atomic.Int64

	wmu sync.Mutex // one action written at a time

	killOnce sync.Once
	killErr  error
}

// Read reads from the connection and notes when data arrived.
func (cn *conn) Read(p []byte) (int, error) {
	cn.waiting.Store(time.Now().UnixNano())
	n, err := cn.Conn.Read(p)
	cn.waiting.Store(0)
	if n > 0 {
		cn.at = time.Now()
		cn.lastRead.Store(cn.at.UnixNano())
	}
	return n, err
}

// write writes one action, within ctx's deadline and at most limit. It
// returns how much was written: an action cut short leaves the stream
// unusable, one not started at all does not.
func (cn *conn) write(ctx context.Context, b []byte, limit time.Duration) (int, error) {
	deadline := time.Now().Add(limit)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := cn.Conn.SetWriteDeadline(deadline); err != nil {
		return 0, err
	}
	return cn.Conn.Write(b)
}

// kill closes the connection for err (the first reason given is kept):
// its reader then ends and the Client reconnects.
func (cn *conn) kill(err error) {
	cn.killOnce.Do(func() {
		cn.killErr = err
		cn.Conn.Close()
	})
}

// connectError is a failed connection attempt.
type connectError struct {
	problem Problem
	detail  string
}

func (e *connectError) Error() string { return e.problem.String() + ": " + e.detail }

// run connects, serves the connection until it ends, pauses and connects
// again, until the Client is closed.
func (c *Client) run() {
	defer c.wg.Done()
	bo := backoff{base: c.opts.ReconnectInterval, max: c.opts.ReconnectMax}
	for c.ctx.Err() == nil {
		cn, err := c.connect()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			ce := &connectError{problem: ProblemHandshake, detail: err.Error()}
			errors.As(err, &ce)
			pause := bo.next()
			c.setDown(ce.problem, ce.detail, pause)
			if !c.sleep(pause) {
				return
			}
			continue
		}
		up := time.Now()
		err = c.serve(cn)
		if c.ctx.Err() != nil {
			return
		}
		if time.Since(up) >= bo.max {
			bo.reset() // a connection that lasted: not a flapping one
		}
		pause := bo.next()
		c.setDown(ProblemLost, err.Error(), pause)
		if !c.sleep(pause) {
			return
		}
	}
}

// sleep waits d unless the Client is closed first.
func (c *Client) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// connect dials, reads the banner and logs in, within HandshakeTimeout.
func (c *Client) connect() (*conn, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.HandshakeTimeout)
	defer cancel()
	nc, err := c.opts.Dial(ctx, "tcp", c.hostport)
	if err != nil {
		return nil, &connectError{ProblemUnreachable, err.Error()}
	}
	cn := &conn{Conn: nc, tcp: nc}
	// Cancellation (Close, or the handshake's deadline) unblocks every
	// read and write of the handshake.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	err = c.handshake(ctx, cn)
	if !stop() && err == nil {
		err = &connectError{ProblemHandshake, "the login took longer than " + c.opts.HandshakeTimeout.String()}
	}
	if err != nil {
		cn.Conn.Close()
		return nil, err
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		cn.Conn.Close()
		return nil, &connectError{ProblemHandshake, err.Error()}
	}
	return cn, nil
}

// handshake does TLS (when asked), reads the banner and logs in.
func (c *Client) handshake(ctx context.Context, cn *conn) error {
	if c.tls != nil {
		tc := tls.Client(cn.tcp, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return &connectError{ProblemTLS, err.Error()}
		}
		cn.Conn = tc
	}
	// Events the owner skips are passed over inside the reader, by their
	// name alone, before their headers are indexed.
	cn.rd = ami.NewReader(cn, ami.ReaderOptions{Skip: func(name []byte) bool { return c.skipped(cn, name) }})
	banner, err := cn.rd.ReadBanner()
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return &connectError{ProblemNoBanner, "no banner within " + c.opts.HandshakeTimeout.String()}
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return &connectError{ProblemNoBanner, "the connection closed before the banner"}
		case errors.Is(err, ami.ErrBanner):
			return &connectError{ProblemNoBanner, err.Error() + " (is this the AMI port?)"}
		}
		return &connectError{ProblemNoBanner, err.Error()}
	}
	c.banner.Store(&banner)

	login := []ami.Header{{Key: "Username", Value: c.opts.Username}}
	if c.opts.Auth == AuthMD5 {
		resp, err := c.exchange(ctx, cn, ami.Action{Name: "Challenge", Headers: []ami.Header{{Key: "AuthType", Value: "MD5"}}})
		if err != nil {
			return err
		}
		nonce := resp.Get("Challenge")
		if !resp.OK() || nonce == "" {
			return &connectError{ProblemLoginRefused, "the MD5 challenge was refused: " + resp.Message() + " (set ami.auth = \"plain\" if this server cannot do it)"}
		}
		sum := md5.Sum([]byte(nonce + c.opts.Secret))
		login = append(login, ami.Header{Key: "AuthType", Value: "MD5"}, ami.Header{Key: "Key", Value: hex.EncodeToString(sum[:])})
	} else {
		login = append(login, ami.Header{Key: "Secret", Value: c.opts.Secret})
	}
	if c.opts.Events != "" {
		login = append(login, ami.Header{Key: "Events", Value: c.opts.Events})
	}
	resp, err := c.exchange(ctx, cn, ami.Action{Name: "Login", Headers: login})
	if err != nil {
		return err
	}
	if !resp.OK() {
		return &connectError{ProblemLoginRefused, resp.Message()}
	}
	return nil
}

// exchange sends a handshake action and reads up to its reply. Messages
// before it are only tapped.
func (c *Client) exchange(ctx context.Context, cn *conn, a ami.Action) (ami.Response, error) {
	id := c.idPrefix + a.Name
	buf, err := ami.AppendAction(nil, a, id)
	if err != nil {
		return ami.Response{}, &connectError{ProblemHandshake, err.Error()}
	}
	if _, err := cn.write(ctx, buf, c.opts.HandshakeTimeout); err != nil {
		return ami.Response{}, &connectError{ProblemHandshake, "sending " + a.Name + ": " + c.ioDetail(err)}
	}
	var m ami.Message
	for {
		err := cn.rd.Next(&m)
		var me *ami.MessageError
		switch {
		case errors.As(err, &me):
			c.rejected(me)
			continue
		case err != nil:
			return ami.Response{}, &connectError{ProblemHandshake, "waiting for the reply to " + a.Name + ": " + c.ioDetail(err)}
		}
		c.stats.messages.Add(1)
		if c.opts.Tap != nil {
			c.opts.Tap(&m, cn.at)
		}
		if m.IsResponse() && bytes.Equal(m.GetBytes("ActionID"), []byte(id)) {
			return m.Response(), nil
		}
	}
}

// ioDetail says what a handshake read or write error means.
func (c *Client) ioDetail(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "no reply within " + c.opts.HandshakeTimeout.String()
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection was closed"
	}
	return err.Error()
}

// serve runs a logged-in connection: its reader, and the keepalive on this
// goroutine, until the connection ends or the Client is closed.
func (c *Client) serve(cn *conn) error {
	now := time.Now()
	cn.lastRead.Store(now.UnixNano())
	c.upSince.Store(now.UnixNano())
	c.setUp(cn)

	done := make(chan error, 1)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		done <- c.readLoop(cn)
	}()
	ka := keepalive{c: c, cn: cn}
	tick := time.NewTicker(min(max(c.opts.Keepalive/4, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	var err error
	for err == nil {
		select {
		case err = <-done:
		case <-c.ctx.Done():
			cn.kill(ErrClosed)
			<-done
			err = ErrClosed
		case <-tick.C:
			if kerr := ka.tick(); kerr != nil {
				cn.kill(kerr)
			}
			c.checkSilence()
		}
	}
	// The first reason the connection was closed for, rather than the
	// read error that followed.
	cn.kill(err)
	err = cn.killErr
	c.mu.Lock()
	if c.conn == cn {
		c.conn = nil
	}
	c.failCalls(ErrConnectionLost)
	c.mu.Unlock()
	return err
}

// readLoop reads messages until the connection fails.
func (c *Client) readLoop(cn *conn) error {
	var m ami.Message
	for {
		err := cn.rd.Next(&m)
		if err != nil {
			var me *ami.MessageError
			if errors.As(err, &me) {
				c.rejected(me)
				continue
			}
			if errors.Is(err, io.EOF) {
				//lint:ignore ST1005 the message starts with a name
				return errors.New("Asterisk closed the connection")
			}
			return err
		}
		c.dispatch(cn, &m)
	}
}

// dispatch hands a message to whom it is for: the Tap, the action waiting
// for it, or the Handler. It runs on the reader goroutine for every message:
// nothing here allocates for an event, and for an event the owner skips
// nothing but its name is looked at.
func (c *Client) dispatch(cn *conn, m *ami.Message) {
	at := cn.at
	c.stats.messages.Add(1)
	if c.opts.Tap != nil {
		c.opts.Tap(m, at)
	}
	if m.IsResponse() {
		c.reply(m)
		return
	}
	if m.IsEvent() {
		c.stats.events.Add(1)
		c.lastEvent.Store(at.UnixNano())
		if c.watchingLists() && c.listItem(m) {
			return
		}
	}
	if h := c.opts.Handler; h != nil {
		c.stats.handled.Add(1)
		h(m, at)
	}
}

// skipped is the reader's event filter, decided by the event's name alone:
// an event skipped is counted and keeps the silence alarm quiet like any
// other, and nothing else is done with it. It keeps everything while a
// list reply may still bring items (their names are the owner's to ignore
// only once no action waits for them) and while the Tap records.
func (c *Client) skipped(cn *conn, name []byte) bool {
	if c.opts.Skip == nil || c.opts.Tap != nil || c.watchingLists() || !c.opts.Skip(name) {
		return false
	}
	c.stats.messages.Add(1)
	c.stats.events.Add(1)
	c.stats.skipped.Add(1)
	c.lastEvent.Store(cn.at.UnixNano())
	return true
}

// watchingLists reports whether events must be checked for list items: a
// list action waits, or one was given up on lately.
func (c *Client) watchingLists() bool {
	if c.lists.Load() > 0 {
		return true
	}
	until := c.watchUntil.Load()
	if until == 0 {
		return false
	}
	if time.Now().UnixNano() < until {
		return true
	}
	c.watchUntil.CompareAndSwap(until, 0)
	return false
}

// reply routes a response to the action waiting for it.
func (c *Client) reply(m *ami.Message) {
	id := m.GetBytes("ActionID")
	c.mu.Lock()
	cl := c.calls[string(id)]
	if cl == nil || cl.started {
		c.mu.Unlock()
		c.stats.unknown.Add(1)
		return
	}
	resp := m.Response()
	cl.resp = resp
	if cl.list && listFollows(resp) {
		cl.started = true
		c.mu.Unlock()
		c.answered()
		return
	}
	c.removeLocked(cl)
	close(cl.done)
	c.mu.Unlock()
	c.answered()
}

// listFollows reports whether a first reply says list items follow.
func listFollows(r ami.Response) bool {
	if ev := r.Get("EventList"); ev != "" {
		return bytes.EqualFold([]byte(ev), []byte("start"))
	}
	return r.OK() && bytes.Contains([]byte(r.Message()), []byte("will follow"))
}

// listItem routes an event carrying one of this Client's ActionIDs to the
// list waiting for it, and reports whether it was one.
func (c *Client) listItem(m *ami.Message) bool {
	id := m.GetBytes("ActionID")
	if !bytes.HasPrefix(id, []byte(c.idPrefix)) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.calls[string(id)]
	if cl == nil || !cl.list {
		c.stats.unknown.Add(1)
		return true
	}
	if bytes.EqualFold(m.GetBytes("EventList"), []byte("Complete")) || bytes.HasSuffix(m.Value(0), []byte("Complete")) {
		c.removeLocked(cl)
		close(cl.done)
		return true
	}
	if len(cl.items) >= c.opts.MaxListItems {
		cl.err = fmt.Errorf("%w: %s passed %d items", ErrListTooLong, cl.name, c.opts.MaxListItems)
		c.removeLocked(cl)
		close(cl.done)
		return true
	}
	cl.items = append(cl.items, m.Response())
	return true
}

// rejected counts a message the reader skipped and says so loudly, at 1,
// 10, 100 ... of each kind: such a message is not used, and an event in it
// is not seen.
func (c *Client) rejected(me *ami.MessageError) {
	var n uint64
	if errors.Is(me, ami.ErrOversized) {
		n = c.stats.oversized.Add(1)
	} else {
		n = c.stats.malformed.Add(1)
	}
	if powerOfTen(n) {
		c.log.Error().Err(me).Uint64("count", n).Msg("AMI message rejected and not used")
	}
}

func powerOfTen(n uint64) bool {
	for p := uint64(1); p <= n; p *= 10 {
		if p == n {
			return true
		}
		if p > n/10 {
			break
		}
	}
	return false
}

// keepalive judges a connection alive from data arriving. The line is
// idle only when the reader waits in Read, nothing arrived for Keepalive
// and nothing waits unread in the socket: a reader busy with a backlog,
// or starved of CPU while data piles up in the socket, is behind, not on
// a dead line.
type keepalive struct {
	c      *Client
	cn     *conn
	ping   *call
	pingAt time.Time
}

// tick sends a Ping when the line is idle (or, while actions time out, to
// see when they are answered again), and returns an error when nothing at
// all arrived within ActionTimeout after one while the reader waited.
func (k *keepalive) tick() error {
	c, now := k.c, time.Now()
	last := time.Unix(0, k.cn.lastRead.Load())
	w := k.cn.waiting.Load()
	waitingSince := time.Unix(0, w)
	behind := w == 0 || k.backlog()
	if k.ping != nil {
		select {
		case <-k.ping.done:
			k.ping = nil
		default:
		}
	}
	if k.ping != nil && !behind && now.Sub(k.pingAt) >= c.opts.ActionTimeout {
		if last.After(k.pingAt) {
			// Data arrives, but the Ping is not answered.
			if c.forget(k.ping) {
				c.actionTimedOut("Ping", now.Sub(k.pingAt))
			}
			k.ping = nil
		} else if now.Sub(later(k.pingAt, waitingSince)) >= c.opts.ActionTimeout {
			return fmt.Errorf("nothing received for %s after a Ping", now.Sub(last).Round(time.Millisecond))
		}
	}
	idle := !behind && now.Sub(later(last, waitingSince)) >= c.opts.Keepalive
	if k.ping == nil && (idle || c.timingOut.Load()) {
		return k.sendPing(now)
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// backlog reports whether bytes wait unread in the socket: the reader is
// behind (starved of CPU), the line not idle.
func (k *keepalive) backlog() bool {
	n, ok := unread(k.cn.tcp)
	return ok && n > 0
}

func (k *keepalive) sendPing(now time.Time) error {
	c := k.c
	id := c.idPrefix + "ping-" + fmt.Sprint(c.nextID.Add(1))
	buf, _ := ami.AppendAction(nil, ami.Action{Name: "Ping"}, id)
	cl := &call{id: id, name: "Ping", done: make(chan struct{})}
	c.mu.Lock()
	if c.conn != k.cn {
		c.mu.Unlock()
		return nil
	}
	c.calls[id] = cl
	c.mu.Unlock()
	c.stats.pings.Add(1)
	if n, err := k.cn.write(c.ctx, buf, c.opts.ActionTimeout); err != nil {
		c.forget(cl)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			// Asterisk takes no more bytes: it does not read this
			// session's actions. The stream is still whole.
			c.actionTimedOut("Ping", c.opts.ActionTimeout)
			return nil
		}
		return fmt.Errorf("writing a Ping: %w", err)
	}
	k.ping, k.pingAt = cl, now
	return nil
}

// checkSilence logs when events stop and start again. Before the first
// event, the silence counts from the login.
func (c *Client) checkSilence() {
	alarm := time.Duration(c.silenceNs.Load())
	last := c.lastEvent.Load()
	if last == 0 {
		last = c.upSince.Load()
	}
	since := time.Since(time.Unix(0, last))
	silent := alarm > 0 && since >= alarm
	c.mu.Lock()
	changed := silent != c.status.EventsSilent && c.status.State == StateUp
	if changed {
		c.status.EventsSilent = silent
	}
	c.mu.Unlock()
	switch {
	case changed && silent:
		c.log.Warn().Dur("silence_alarm", alarm).Str("address", c.opts.Address).
			Msg("no AMI event for silence_alarm: the PBX is quiet, or events are not reaching the guard (check the user's read classes)")
	case changed:
		c.log.Info().Msg("AMI events arrive again")
	}
}

// setUp marks the session logged in on cn and logs it.
func (c *Client) setUp(cn *conn) {
	c.mu.Lock()
	if c.closed { // Close came during the login: serve ends at once
		c.mu.Unlock()
		return
	}
	n := c.stats.connects.Add(1)
	prev := c.status
	c.conn = cn
	c.status.State, c.status.Problem, c.status.Detail, c.status.Since = StateUp, ProblemNone, "", time.Now()
	c.mu.Unlock()
	major, minor := c.Version()
	ev := c.log.Info().Str("address", c.opts.Address).Str("banner", c.Banner()).
		Str("ami_version", fmt.Sprintf("%d.%d", major, minor)).Uint64("logins", n)
	if prev.State == StateDown {
		ev = ev.Str("after", prev.Problem.String()).Dur("down", time.Since(prev.Since))
	}
	ev.Msg("AMI session logged in")
	c.lastProblem = ProblemNone
	if c.opts.OnConnect != nil {
		c.opts.OnConnect(c.Banner())
	}
}

// setDown marks the session down for problem; a problem is logged when it
// starts, not at every retry.
func (c *Client) setDown(p Problem, detail string, pause time.Duration) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.status.State != StateDown || c.status.Problem != p {
		c.status.Since = time.Now()
	}
	c.status.State, c.status.Problem, c.status.Detail = StateDown, p, detail
	c.mu.Unlock()
	if p == c.lastProblem {
		c.log.Debug().Str("problem", p.String()).Str("error", detail).Dur("retry_in", pause).Msg("AMI still down")
		return
	}
	c.lastProblem = p
	var ev *zerolog.Event
	switch p {
	case ProblemLost, ProblemHandshake:
		ev = c.log.Warn()
	default:
		ev = c.log.Error()
	}
	ev = ev.Str("address", c.opts.Address).Str("problem", p.String()).Dur("retry_in", pause)
	switch p {
	case ProblemUnreachable:
		ev.Str("error", detail).Msg("AMI unreachable: the guard sees nothing until it connects")
	case ProblemTLS:
		ev.Str("error", detail).Msg("AMI TLS handshake failed: the guard sees nothing until it connects")
	case ProblemNoBanner:
		ev.Str("error", detail).Msg("AMI sent no banner: the guard sees nothing until it connects")
	case ProblemLoginRefused:
		ev.Str("asterisk_message", detail).Str("username", c.opts.Username).
			Msg("AMI login refused: check ami.username, the secret and the user's permit/deny in manager.conf")
	case ProblemHandshake:
		ev.Str("error", detail).Msg("AMI login failed")
	default:
		ev.Str("error", detail).Msg("AMI connection lost: the guard is blind until it reconnects")
	}
}

var _ net.Conn = (*conn)(nil)
