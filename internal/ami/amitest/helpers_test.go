package amitest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/testenv"
)

const (
	transcripts  = "../../../testdata/transcripts/"
	attackMixed  = transcripts + "attack-mixed.ami"
	dialog20     = "testdata/asterisk-20/actions-dialog.txt"
	dialog22     = "testdata/asterisk-22/actions-dialog.txt"
	dialog11     = "testdata/asterisk-11/actions-dialog.txt"
	loginFail11  = "testdata/asterisk-11/login-failure-dialog.txt"
	attack11     = transcripts + "asterisk11-attack-sip.ami"
	rotateDialog = "testdata/asterisk-20/rotate-dialog.txt"
	loginFailDlg = "testdata/asterisk-20/login-failure-dialog.txt"
	readTimeout  = 10 * time.Second
)

// frame is a message read by the test client.
type frame struct {
	hdrs [][2]string
	raw  []byte
}

func (f *frame) get(k string) string {
	for _, h := range f.hdrs {
		if strings.EqualFold(h[0], k) {
			return h[1]
		}
	}
	return ""
}

func (f *frame) keys() []string {
	var ks []string
	for _, h := range f.hdrs {
		ks = append(ks, h[0])
	}
	return ks
}

func (f *frame) isEvent(name string) bool {
	return len(f.hdrs) > 0 && strings.EqualFold(f.hdrs[0][0], "Event") && (name == "" || strings.EqualFold(f.hdrs[0][1], name))
}

func (f *frame) isResponse() bool {
	return len(f.hdrs) > 0 && strings.EqualFold(f.hdrs[0][0], "Response")
}

func toFrame(m *ami.Message) *frame {
	f := &frame{raw: append([]byte(nil), m.Raw()...)}
	for i := 0; i < m.Len(); i++ {
		f.hdrs = append(f.hdrs, [2]string{string(m.Key(i)), string(m.Value(i))})
	}
	return f
}

// client is a raw AMI client for the tests.
type client struct {
	t      *testing.T
	conn   net.Conn
	r      *ami.Reader
	banner string
	m      ami.Message
}

func dial(t *testing.T, s *Server) *client {
	t.Helper()
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &client{t: t, conn: conn, r: ami.NewReader(conn, ami.ReaderOptions{})}
	conn.SetReadDeadline(time.Now().Add(readTimeout))
	c.banner, err = c.r.ReadBanner()
	if err != nil {
		t.Fatalf("banner: %v", err)
	}
	return c
}

// send writes an action: lines "Key: Value".
func (c *client) send(lines ...string) {
	c.t.Helper()
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	b.WriteString("\r\n")
	c.conn.SetWriteDeadline(time.Now().Add(readTimeout))
	if _, err := io.WriteString(c.conn, b.String()); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// next reads the next message.
func (c *client) next() *frame {
	c.t.Helper()
	f, err := c.tryNext(readTimeout)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

func (c *client) tryNext(d time.Duration) (*frame, error) {
	c.conn.SetReadDeadline(time.Now().Add(d))
	for {
		err := c.r.Next(&c.m)
		var me *ami.MessageError
		if errors.As(err, &me) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return toFrame(&c.m), nil
	}
}

// login logs in; events is the Events header ("" for none). It returns the
// messages of the login's write (response and any events).
func (c *client) login(events string) *frame {
	c.t.Helper()
	lines := []string{"Action: Login", "Username: guard", "Secret: guardpass"}
	if events != "" {
		lines = append(lines, "Events: "+events)
	}
	c.send(append(lines, "ActionID: login")...)
	f := c.next()
	if f.get("Response") != "Success" {
		c.t.Fatalf("login: %q", f.hdrs)
	}
	return f
}

// response reads until the response with this ActionID, returning the
// events read before it too.
func (c *client) response(aid string) (*frame, []*frame) {
	c.t.Helper()
	var skipped []*frame
	for {
		f := c.next()
		if f.isResponse() && f.get("ActionID") == aid {
			return f, skipped
		}
		skipped = append(skipped, f)
	}
}

// list reads a list reply: the response, then the items with the ActionID
// until the complete event. Other events read meanwhile are returned apart.
func (c *client) list(aid, complete string) (resp *frame, items []*frame, done *frame, others []*frame) {
	c.t.Helper()
	resp, others = c.response(aid)
	if resp.get("Response") != "Success" {
		return resp, nil, nil, others
	}
	for {
		f := c.next()
		switch {
		case f.isEvent(complete) && f.get("ActionID") == aid:
			return resp, items, f, others
		case f.get("ActionID") == aid:
			items = append(items, f)
		default:
			others = append(others, f)
		}
	}
}

// ping sends a Ping and reads up to its Pong: everything queued before it
// is returned.
func (c *client) ping(aid string) []*frame {
	c.t.Helper()
	c.send("Action: Ping", "ActionID: "+aid)
	_, skipped := c.response(aid)
	return skipped
}

// dialogMsg is a message of a recorded dialog.
type dialogMsg struct {
	fromClient bool
	hdrs       [][2]string
	extraBlank bool // followed by an extra empty line
}

func (d *dialogMsg) get(k string) string {
	f := frame{hdrs: d.hdrs}
	return f.get(k)
}

func (d *dialogMsg) keys() []string {
	f := frame{hdrs: d.hdrs}
	return f.keys()
}

// readDialog parses a dialog file (">>> " sent, "<<< " received).
func readDialog(t *testing.T, path string) []*dialogMsg {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var out []*dialogMsg
	var cur *dialogMsg
	first := true
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if first { // the banner
			first = false
			continue
		}
		from := strings.HasPrefix(line, ">>> ")
		body := line[4:]
		if body == "" {
			if cur != nil {
				out = append(out, cur)
				cur = nil
			} else if len(out) > 0 {
				out[len(out)-1].extraBlank = true
			}
			continue
		}
		if cur == nil {
			cur = &dialogMsg{fromClient: from}
		}
		k, v, _ := strings.Cut(body, ":")
		cur.hdrs = append(cur.hdrs, [2]string{k, strings.TrimPrefix(v, " ")})
	}
	return out
}

// dialogFor returns the server messages of a dialog that carry an ActionID
// (the response and its list items), and the client's action.
func dialogFor(t *testing.T, path, aid string) (action *dialogMsg, replies []*dialogMsg) {
	t.Helper()
	for _, m := range readDialog(t, path) {
		if m.get("ActionID") != aid {
			continue
		}
		if m.fromClient {
			action = m
		} else {
			replies = append(replies, m)
		}
	}
	if action == nil || len(replies) == 0 {
		t.Fatalf("%s: no ActionID %s", path, aid)
	}
	return action, replies
}

// actionLines turns a recorded action into lines to send.
func actionLines(d *dialogMsg) []string {
	var out []string
	for _, h := range d.hdrs {
		out = append(out, h[0]+": "+h[1])
	}
	return out
}

// sameKeys fails unless the frame has exactly the dialog's headers in order.
func sameKeys(t *testing.T, what string, got *frame, want *dialogMsg) {
	t.Helper()
	if g, w := strings.Join(got.keys(), "|"), strings.Join(want.keys(), "|"); g != w {
		t.Errorf("%s: headers\n got %s\nwant %s", what, g, w)
	}
}

// sameValues fails unless the frame has the dialog's values for every
// header except those named in except.
func sameValues(t *testing.T, what string, got *frame, want *dialogMsg, except ...string) {
	t.Helper()
	skip := map[string]bool{}
	for _, k := range except {
		skip[k] = true
	}
	for i, h := range want.hdrs {
		if skip[h[0]] || i >= len(got.hdrs) {
			continue
		}
		if got.hdrs[i][1] != h[1] {
			t.Errorf("%s: %s = %q, want %q", what, h[0], got.hdrs[i][1], h[1])
		}
	}
}

// cutTranscript returns the transcript's bytes up to (not including) the
// first message received after stamp (an RFC 3339 time, compared as text).
func cutTranscript(t *testing.T, path, stamp string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for i, part := range bytes.SplitAfter(b, []byte("\r\n\r\n")) {
		if i > 0 {
			j := bytes.Index(part, []byte("TimeReceived: "))
			if j >= 0 && string(part[j+14:j+14+len(stamp)]) > stamp {
				break
			}
		}
		out.Write(part)
	}
	return out.Bytes()
}

// start starts a server and closes it at the end of the test.
func start(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = 5 * time.Second // never drop a slow test client
	}
	opts.Logf = t.Logf
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// startWith starts a server streaming the transcript bytes fully before the
// test goes on (Speed 0, no session yet: the model is built, nobody saw
// the events).
func startWith(t *testing.T, transcript []byte, opts Options) *Server {
	t.Helper()
	opts.Transcript = bytes.NewReader(transcript)
	s := start(t, opts)
	s.Play()
	select {
	case <-s.Done():
	case <-time.After(readTimeout):
		t.Fatal("transcript not streamed")
	}
	return s
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, readTimeout, cond)
}

// goroutines returns the number of goroutines once it has settled.
func goroutines(want int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 200 && n > want; i++ {
		time.Sleep(10 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}
