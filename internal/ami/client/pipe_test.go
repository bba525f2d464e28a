package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
)

// pipeAMI is a scripted AMI server on net.Pipe connections, for tests in a
// synctest bubble: the test plays Asterisk, with the bubble's fake clock.
type pipeAMI struct {
	conns chan *pipeConn
}

func newPipeAMI() *pipeAMI { return &pipeAMI{conns: make(chan *pipeConn)} }

func (p *pipeAMI) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case p.conns <- &pipeConn{Conn: s, r: ami.NewReader(s, ami.ReaderOptions{})}:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// pipeConn is the server's end of one connection.
type pipeConn struct {
	net.Conn
	r *ami.Reader
	m ami.Message
}

// send writes frames ("Key: Value" lines joined by \r\n); each gets its
// closing empty line.
func (c *pipeConn) send(t *testing.T, frames ...string) {
	t.Helper()
	var b strings.Builder
	for _, f := range frames {
		b.WriteString(strings.TrimRight(f, "\r\n") + "\r\n\r\n")
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Errorf("server write: %v", err)
	}
}

// action reads the next action.
func (c *pipeConn) action(t *testing.T) ami.Response {
	t.Helper()
	if err := c.r.Next(&c.m); err != nil {
		t.Fatalf("server read: %v", err)
	}
	return c.m.Response()
}

// accept greets and logs the client in (plain login).
func (c *pipeConn) accept(t *testing.T) {
	t.Helper()
	if _, err := c.Write([]byte("Asterisk Call Manager/9.0.0\r\n")); err != nil {
		t.Fatal(err)
	}
	login := c.action(t)
	if login.Get("Action") != "Login" {
		t.Fatalf("first action %v", login)
	}
	c.send(t, "Response: Success\r\nActionID: "+login.Get("ActionID")+"\r\nMessage: Authentication accepted")
	synctest.Wait() // the client has taken the reply: it is logged in
}

// pipeClient starts a Client on p in the current bubble, plain login.
func pipeClient(t *testing.T, p *pipeAMI, opts client.Options) *client.Client {
	t.Helper()
	opts.Address, opts.Username, opts.Secret, opts.Auth = "pbx:5038", "guard", "guardpass", client.AuthPlain
	opts.Dial = p.dial
	c, err := client.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Many actions in flight at once, answered in the reverse order: each gets
// its own reply.
func TestManyActionsInFlightOutOfOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeAMI()
		c := pipeClient(t, p, client.Options{Name: "t"})
		srv := <-p.conns
		srv.accept(t)
		const n = 50
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				resp, err := c.Do(context.Background(), ami.Action{Name: "Getvar", Headers: []ami.Header{{Key: "Variable", Value: fmt.Sprint("v", i)}}})
				if err == nil && resp.Get("Value") != fmt.Sprint("value of v", i) {
					err = fmt.Errorf("action %d got %v", i, resp)
				}
				errs[i] = err
			})
		}
		var got []ami.Response
		for range n {
			got = append(got, srv.action(t))
		}
		for i := n - 1; i >= 0; i-- {
			a := got[i]
			srv.send(t, "Response: Success\r\nActionID: "+a.Get("ActionID")+"\r\nVariable: "+a.Get("Variable")+"\r\nValue: value of "+a.Get("Variable"))
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Error(err)
		}
		if st := c.Stats(); st.UnknownReplies != 0 || st.Waiting != 0 {
			t.Errorf("stats %+v", st)
		}
	})
}

// A reply that comes after its action's deadline is dropped and counted;
// the action said ErrTimeout and the session said its actions time out,
// until the next reply.
func TestReplyAfterDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeAMI()
		logs := &logSink{}
		c := pipeClient(t, p, client.Options{Name: "t", ActionTimeout: 2 * time.Second, Keepalive: time.Hour, Logger: zerolog.New(logs)})
		srv := <-p.conns
		srv.accept(t)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Do(context.Background(), ami.Action{Name: "UpdateConfig"})
			errc <- err
		}()
		late := srv.action(t)
		err := <-errc // the fake clock runs to the deadline
		if !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("Do: %v, want ErrTimeout", err)
		}
		if st := c.Status(); !st.ActionsTimingOut {
			t.Error("the status does not say actions time out")
		}
		srv.send(t, "Response: Success\r\nActionID: "+late.Get("ActionID")+"\r\nMessage: Updated")
		synctest.Wait()
		if st := c.Stats(); st.UnknownReplies != 1 || st.ActionTimeouts != 1 {
			t.Errorf("stats %+v", st)
		}
		// The late reply does not end the run of timeouts: it answered
		// nobody. While they last, the client probes with a Ping; its
		// answer ends them.
		if !c.Status().ActionsTimingOut {
			t.Error("a late reply ended the timeouts")
		}
		probe := srv.action(t)
		if probe.Get("Action") != "Ping" {
			t.Fatalf("probe %v", probe)
		}
		srv.send(t, "Response: Success\r\nActionID: "+probe.Get("ActionID")+"\r\nPing: Pong")
		synctest.Wait()
		if c.Status().ActionsTimingOut {
			t.Error("still timing out after a reply")
		}
		if w, i := logs.lines("AMI actions time out: Asterisk does not answer this session's actions"), logs.lines("AMI actions are answered again"); len(w) != 1 || len(i) != 1 {
			t.Errorf("%d warn and %d info lines, want one each", len(w), len(i))
		}
	})
}

// A Ping goes out only when nothing arrived for Keepalive: never while
// events flow. Once pinged, the line is dead only when nothing at all
// arrives within ActionTimeout; then the client connects again.
func TestPingOnlyWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const keepalive, timeout = 5 * time.Second, 3 * time.Second
		p := newPipeAMI()
		var evs events
		c := pipeClient(t, p, client.Options{Name: "t", Keepalive: keepalive, ActionTimeout: timeout,
			ReconnectInterval: time.Second, Handler: evs.handle})
		srv := <-p.conns
		srv.accept(t)
		pings := make(chan ami.Response, 4)
		go func() {
			for {
				var m ami.Message
				if srv.r.Next(&m) != nil {
					return
				}
				pings <- m.Response()
			}
		}()
		// Events every second for a minute: no Ping.
		var last time.Time
		for i := range 60 {
			srv.send(t, fmt.Sprintf("Event: PeerStatus\r\nPrivilege: system,all\r\nPeer: SIP/%d\r\nPeerStatus: Registered", i))
			last = time.Now()
			time.Sleep(time.Second)
			select {
			case a := <-pings:
				t.Fatalf("a %s while events flow (event %d)", a.Get("Action"), i)
			default:
			}
		}
		ping := <-pings
		idle := time.Since(last)
		if ping.Get("Action") != "Ping" || idle < keepalive || idle > keepalive+time.Second+keepalive/4 {
			t.Errorf("%s after %s idle, want a Ping after %s", ping.Get("Action"), idle, keepalive)
		}
		// Answered: alive, and the next Ping comes only after another
		// idle Keepalive.
		srv.send(t, "Response: Success\r\nActionID: "+ping.Get("ActionID")+"\r\nPing: Pong")
		answered := time.Now()
		ping = <-pings
		if d := time.Since(answered); ping.Get("Action") != "Ping" || d < keepalive {
			t.Errorf("second %s %s after the Pong, want a Ping after %s", ping.Get("Action"), d, keepalive)
		}
		// Not answered, nothing else either: dead after ActionTimeout.
		pinged := time.Now()
		next := <-p.conns
		if d := time.Since(pinged); d < timeout {
			t.Errorf("declared dead %s after the Ping, want at least %s", d, timeout)
		}
		next.accept(t)
		synctest.Wait()
		st := c.Status()
		if st.State != client.StateUp || st.Connects != 2 || c.Stats().Pings != 2 {
			t.Errorf("status %+v, stats %+v", st, c.Stats())
		}
	})
}

// Data that keeps arriving after a Ping keeps the connection alive even
// when the Pong never comes: that is an action not answered, not a dead
// line.
func TestUnansweredPingWithDataIsNotDead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeAMI()
		c := pipeClient(t, p, client.Options{Name: "t", Keepalive: 5 * time.Second, ActionTimeout: 3 * time.Second})
		srv := <-p.conns
		srv.accept(t)
		ping := srv.action(t)
		if ping.Get("Action") != "Ping" {
			t.Fatalf("got %v", ping)
		}
		go func() { // read the probes that follow, answer none
			for srv.r.Next(&ami.Message{}) == nil {
			}
		}()
		// Events keep coming, the Pong does not.
		for i := range 10 {
			time.Sleep(time.Second)
			srv.send(t, fmt.Sprintf("Event: PeerStatus\r\nPrivilege: system,all\r\nPeer: SIP/%d", i))
		}
		if st := c.Status(); st.State != client.StateUp || st.Connects != 1 || !st.ActionsTimingOut {
			t.Errorf("status %+v", st)
		}
	})
}

// Reconnect pauses grow from ReconnectInterval, doubling, each within ±20%
// of its step, never above ReconnectMax.
func TestReconnectBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu       sync.Mutex
			attempts []time.Time
		)
		refuse := func(context.Context, string, string) (net.Conn, error) {
			mu.Lock()
			attempts = append(attempts, time.Now())
			mu.Unlock()
			return nil, errors.New("connect: connection refused")
		}
		c, err := client.New(client.Options{Address: "pbx:5038", Username: "guard", Secret: "x", Dial: refuse,
			ReconnectInterval: time.Second, ReconnectMax: 16 * time.Second, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Minute)
		c.Close()
		mu.Lock()
		defer mu.Unlock()
		if len(attempts) < 10 {
			t.Fatalf("%d attempts in 3 minutes", len(attempts))
		}
		step := time.Second
		ratios := map[float64]bool{}
		for i := 1; i < len(attempts); i++ {
			d := attempts[i].Sub(attempts[i-1])
			lo, hi := time.Duration(float64(step)*0.8), min(time.Duration(float64(step)*1.2), 16*time.Second)
			if d < lo || d > hi {
				t.Errorf("pause %d: %s, want %s to %s", i, d, lo, hi)
			}
			ratios[float64(d)/float64(step)] = true
			step = min(2*step, 16*time.Second)
		}
		if len(ratios) < 3 {
			t.Errorf("pauses without jitter: ratios %v", ratios)
		}
		if st := c.Status(); st.State != client.StateClosed {
			t.Errorf("state %v after Close", st.State)
		}
	})
}

// No event for SilenceAlarm: said once, and once when events come again.
func TestSilenceAlarm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeAMI()
		logs := &logSink{}
		c := pipeClient(t, p, client.Options{Name: "t", Keepalive: time.Hour, SilenceAlarm: 10 * time.Second, Logger: zerolog.New(logs)})
		srv := <-p.conns
		srv.accept(t)
		time.Sleep(9 * time.Second)
		if c.Status().EventsSilent {
			t.Error("silent before silence_alarm")
		}
		time.Sleep(30 * time.Second)
		if !c.Status().EventsSilent {
			t.Error("not silent after silence_alarm")
		}
		srv.send(t, "Event: PeerStatus\r\nPrivilege: system,all\r\nPeer: SIP/200")
		time.Sleep(2 * time.Second)
		if c.Status().EventsSilent {
			t.Error("still silent after an event")
		}
		warn, info := logs.lines("no AMI event for silence_alarm: the PBX is quiet, or events are not reaching the guard (check the user's read classes)"), logs.lines("AMI events arrive again")
		if len(warn) != 1 || warn[0]["level"] != "warn" || len(info) != 1 {
			t.Errorf("%d warn lines, %d info lines, want one each", len(warn), len(info))
		}
	})
}

// A reader held up (a handler starved of CPU, here one that blocks for a
// minute) while events keep coming is behind, not on a dead line: no Ping,
// no reconnect, and every event is handled once it goes on.
func TestBusyReaderIsNotDead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeAMI()
		release := make(chan struct{})
		var mu sync.Mutex
		handled := 0
		c := pipeClient(t, p, client.Options{Name: "t", Keepalive: time.Second, ActionTimeout: time.Second,
			Handler: func(m *ami.Message, _ time.Time) {
				if m.Get("Event") == "Block" {
					<-release
				}
				mu.Lock()
				handled++
				mu.Unlock()
			}})
		srv := <-p.conns
		srv.accept(t)
		var (
			pmu     sync.Mutex
			pingsAt []time.Time
		)
		go func() { // note when Pings come; answer those after the release
			var m ami.Message
			for srv.r.Next(&m) == nil {
				pmu.Lock()
				pingsAt = append(pingsAt, time.Now())
				pmu.Unlock()
				select {
				case <-release:
					srv.send(t, "Response: Success\r\nActionID: "+m.Get("ActionID")+"\r\nPing: Pong")
				default:
				}
			}
		}()
		go func() {
			srv.send(t, "Event: Block\r\nPrivilege: system,all")
			for i := range 100 {
				srv.send(t, fmt.Sprintf("Event: PeerStatus\r\nPrivilege: system,all\r\nPeer: SIP/%d", i))
				time.Sleep(100 * time.Millisecond)
			}
		}()
		time.Sleep(time.Minute)
		released := time.Now()
		close(release)
		time.Sleep(30 * time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		pmu.Lock()
		defer pmu.Unlock()
		if len(pingsAt) > 0 && pingsAt[0].Before(released) {
			t.Errorf("a Ping %s after the reader was held up", pingsAt[0].Sub(released.Add(-time.Minute)))
		}
		if st := c.Status(); st.Connects != 1 || st.State != client.StateUp || handled != 101 {
			t.Errorf("status %+v, %d handled", st, handled)
		}
	})
}

// AfterWrite's function runs once the action is on the wire, before its
// reply: a second action can follow the first without waiting for it.
func TestAfterWriteBeforeReply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeAMI()
		c := pipeClient(t, p, client.Options{Name: "t", Keepalive: time.Hour})
		srv := <-p.conns
		srv.accept(t)
		written := make(chan struct{})
		var calls int
		done := make(chan error, 1)
		go func() {
			ctx := client.AfterWrite(context.Background(), func() { calls++; close(written) })
			_, err := c.Do(ctx, ami.Action{Name: "Getvar", Headers: []ami.Header{{Key: "Variable", Value: "CHANNEL(recvip)"}}})
			done <- err
		}()
		first := srv.action(t)
		<-written // the reply has not been sent
		go func() { c.Do(context.Background(), ami.Action{Name: "Hangup"}) }()
		second := srv.action(t)
		if first.Get("Action") != "Getvar" || second.Get("Action") != "Hangup" {
			t.Fatalf("actions %q then %q", first.Get("Action"), second.Get("Action"))
		}
		srv.send(t, "Response: Success\r\nActionID: "+first.Get("ActionID")+"\r\nValue: 192.0.2.1")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if calls != 1 {
			t.Errorf("written called %d times, want 1", calls)
		}
	})
}

// Nothing sent, nothing written: the function is not called when the
// client is not connected.
func TestAfterWriteNotCalledWhenNotSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipeAMI()
		c := pipeClient(t, p, client.Options{Name: "t"})
		called := false
		_, err := c.Do(client.AfterWrite(context.Background(), func() { called = true }), ami.Action{Name: "Ping"})
		if !errors.Is(err, client.ErrNotConnected) {
			t.Fatalf("Do before login: %v, want ErrNotConnected", err)
		}
		if called {
			t.Error("written called for an action never sent")
		}
		srv := <-p.conns
		srv.accept(t)
	})
}
