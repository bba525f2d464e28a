package loadgen

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// The minimal AMI server: banner, Login (Success with FullyBooted and
// SuccessfulAuth in one write, as Asterisk 20 does), Events, Ping, Hangup
// by name and by /regex/, Getvar, GetConfig and UpdateConfig (refused:
// the guard's rotation fails harmlessly), CoreShowChannels, SIPpeers,
// PJSIPShowContacts (empty lists), Logoff. Reply texts follow
// internal/ami/amitest (which follows the recorded dialogs).

const banner = "Asterisk Call Manager/9.0.0\r\n"

type conn struct {
	id     int
	c      net.Conn
	wmu    sync.Mutex
	mask   atomic.Uint32
	authed atomic.Bool
	dead   atomic.Bool
	// replies counts the messages of action answers written.
	replies atomic.Uint64
	// challenge is the MD5 login's challenge (the serve goroutine's).
	challenge string
}

// reply writes an action's answer and counts the events in it (list
// items, the login's FullyBooted): the guard's client counts every message
// with an Event header it reads, responses without one not, so the
// generator's events the guard received are its events less these.
func (c *conn) reply(b []byte) error {
	c.replies.Add(uint64(bytes.Count(b, []byte("\nEvent: "))))
	return c.write(b)
}

func (c *conn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.dead.Load() {
		return net.ErrClosed
	}
	_, err := c.c.Write(b)
	if err != nil {
		c.dead.Store(true)
	}
	return err
}

type server struct {
	ln       net.Listener
	user     string
	secret   string
	gen      *generator
	start    time.Time
	mu       sync.Mutex
	conns    []*conn
	nextID   int
	wg       sync.WaitGroup
	actions  sync.Map // name -> *atomic.Uint64
	maskSet  chan struct{}
	maskOnce sync.Once
}

func newServer(user, secret string, gen *generator) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{ln: ln, user: user, secret: secret, gen: gen, start: time.Now(), maskSet: make(chan struct{})}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *server) addr() string { return s.ln.Addr().String() }

// close stops accepting. The sessions stay open until the guard, stopped
// first, closes them.
func (s *server) close() {
	s.ln.Close()
}

func (s *server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.nextID++
		c := &conn{id: s.nextID, c: nc}
		c.mask.Store(classAll)
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

// eventConns returns the logged-in sessions that take events and the
// union of their masks.
func (s *server) eventConns(dst []*conn) ([]*conn, uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var mask uint32
	dst = dst[:0]
	for _, c := range s.conns {
		if c.authed.Load() && !c.dead.Load() && c.mask.Load() != 0 {
			dst = append(dst, c)
			mask |= c.mask.Load()
		}
	}
	return dst, mask
}

func (s *server) count(name string) {
	v, _ := s.actions.LoadOrStore(name, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// repliesToEventSessions counts the reply messages written to sessions
// that take events (all of them, over the run).
func (s *server) repliesToEventSessions() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, c := range s.conns {
		if c.mask.Load() != 0 {
			n += c.replies.Load()
		}
	}
	return n
}

func (s *server) actionCounts() map[string]uint64 {
	out := map[string]uint64{}
	s.actions.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

type reply struct{ b []byte }

func (r *reply) h(k, v string) *reply {
	r.b = append(r.b, k...)
	r.b = append(r.b, ": "...)
	r.b = append(r.b, v...)
	r.b = append(r.b, '\r', '\n')
	return r
}

func (r *reply) id(aid string) *reply {
	if aid != "" {
		r.h("ActionID", aid)
	}
	return r
}

func (r *reply) end() *reply { r.b = append(r.b, '\r', '\n'); return r }

func errorReply(aid, msg string) []byte {
	return new(reply).h("Response", "Error").id(aid).h("Message", msg).end().b
}

func listStart(aid, msg string) *reply {
	return new(reply).h("Response", "Success").id(aid).h("EventList", "start").h("Message", msg).end()
}

func (r *reply) listComplete(event, aid string, n int) *reply {
	return r.h("Event", event).id(aid).h("EventList", "Complete").h("ListItems", strconv.Itoa(n)).end()
}

func (s *server) serve(c *conn) {
	defer s.wg.Done()
	defer c.c.Close()
	if c.write([]byte(banner)) != nil {
		return
	}
	r := ami.NewReader(c.c, ami.ReaderOptions{})
	var m ami.Message
	for {
		err := r.Next(&m)
		at := time.Now()
		if err != nil {
			var me *ami.MessageError
			if errors.As(err, &me) {
				continue
			}
			c.dead.Store(true)
			return
		}
		if !s.handle(c, &m, at) {
			c.dead.Store(true)
			return
		}
	}
}

func (s *server) handle(c *conn, m *ami.Message, at time.Time) bool {
	name := strings.ToLower(m.Get("Action"))
	aid := m.Get("ActionID")
	s.count(name)
	if name != "login" && name != "logoff" && name != "challenge" && !c.authed.Load() {
		return c.reply(errorReply(aid, "Permission denied")) == nil
	}
	switch name {
	case "challenge":
		if !strings.EqualFold(m.Get("AuthType"), "md5") {
			return c.reply(errorReply(aid, "Must specify AuthType")) == nil
		}
		c.challenge = strconv.FormatInt(time.Now().UnixNano()%(1<<31), 10)
		return c.reply(new(reply).h("Response", "Success").id(aid).h("Challenge", c.challenge).end().b) == nil
	case "login":
		ok := m.Get("Username") == s.user && m.Get("Secret") == s.secret
		if strings.EqualFold(m.Get("AuthType"), "md5") {
			sum := md5.Sum([]byte(c.challenge + s.secret))
			ok = m.Get("Username") == s.user && c.challenge != "" && m.Get("Key") == hex.EncodeToString(sum[:])
		}
		if !ok {
			time.Sleep(time.Second)
			_ = c.reply(errorReply(aid, "Authentication failed"))
			return false
		}
		if m.Has("Events") {
			mask := parseMask(m.Get("Events"))
			if s.gen != nil && s.gen.opts.AllEvents && mask != 0 {
				mask = classAll
			}
			c.mask.Store(mask)
			if mask != 0 {
				s.maskOnce.Do(func() { close(s.maskSet) })
			}
		}
		up := strconv.Itoa(int(time.Since(s.start).Seconds()))
		r := new(reply).h("Response", "Success").id(aid).h("Message", "Authentication accepted").end()
		r.h("Event", "FullyBooted").h("Privilege", "system,all").h("Uptime", up).h("LastReload", up).h("Status", "Fully Booted").end()
		tv := eventTV(time.Now())
		r.h("Event", "SuccessfulAuth").h("Privilege", "security,all").h("EventTV", tv).h("Severity", "Informational").
			h("Service", "AMI").h("EventVersion", "1").h("AccountID", s.user).
			h("SessionID", "0x7fa2cc"+hex6(uint64(0x016a90+c.id*0x1c0))).
			h("LocalAddress", "IPV4/TCP/"+s.addr()).h("RemoteAddress", "IPV4/TCP/"+strings.Replace(c.c.RemoteAddr().String(), ":", "/", 1)).
			h("UsingPassword", "0").h("SessionTV", tv).end()
		// The event writer must not interleave with the login reply.
		err := c.reply(r.b)
		c.authed.Store(true)
		return err == nil
	case "logoff":
		_ = c.reply(new(reply).h("Response", "Goodbye").id(aid).h("Message", "Thanks for all the fish.").end().b)
		return false
	case "events":
		mask := parseMask(m.Get("EventMask"))
		if s.gen != nil && s.gen.opts.AllEvents && mask != 0 {
			mask = classAll
		}
		c.mask.Store(mask)
		state := "On"
		if mask == 0 {
			state = "Off"
		}
		err := c.reply(new(reply).h("Response", "Success").id(aid).h("Events", state).end().b)
		if mask != 0 {
			s.maskOnce.Do(func() { close(s.maskSet) })
		}
		return err == nil
	case "ping":
		now := time.Now()
		ts := strconv.FormatInt(now.Unix(), 10) + "." + pad6(now.Nanosecond()/1000)
		// Not counted: a Ping's reply has no Event header.
		return c.write(new(reply).h("Response", "Success").id(aid).h("Ping", "Pong").h("Timestamp", ts).end().b) == nil
	case "coreshowchannels":
		// The generator's calls are not listed: the guard learns them from
		// the stream (it connects before the first call).
		return c.reply(listStart(aid, "Channels will follow").listComplete("CoreShowChannelsComplete", aid, 0).b) == nil
	case "sippeers":
		return c.reply(listStart(aid, "Peer status list will follow").listComplete("PeerlistComplete", aid, 0).b) == nil
	case "pjsipshowcontacts":
		return c.reply(append(errorReply(aid, "No Contacts found"), '\r', '\n')) == nil
	case "getconfig":
		return c.reply(errorReply(aid, "Config file not found")) == nil
	case "updateconfig":
		return c.reply(errorReply(aid, "Config file not found")) == nil
	case "getvar":
		v, ok := s.gen.peerAddr(m.Get("Channel"), m.Get("Variable"))
		if !ok {
			return c.reply(errorReply(aid, "No such channel")) == nil
		}
		return c.reply(new(reply).h("Response", "Success").id(aid).h("Variable", m.Get("Variable")).h("Value", v).end().b) == nil
	case "hangup":
		return s.hangup(c, m, aid, at)
	}
	return c.reply(errorReply(aid, "Invalid/unknown command: "+m.Get("Action")+". Use Action: ListCommands to show available commands.")) == nil
}

func (s *server) hangup(c *conn, m *ami.Message, aid string, at time.Time) bool {
	ch := m.Get("Channel")
	cause, err := strconv.Atoi(m.Get("Cause"))
	if err != nil || cause <= 0 || cause > 127 {
		cause = 16
	}
	if len(ch) > 2 && ch[0] == '/' && ch[len(ch)-1] == '/' {
		re, err := regexp.Compile(ch[1 : len(ch)-1])
		if err != nil {
			return c.reply(errorReply(aid, "Regex compile failed on: "+ch[1:len(ch)-1])) == nil
		}
		hung := s.gen.hangupMatching(ch, re, cause, at)
		r := listStart(aid, "Channels hung up will follow")
		for _, h := range hung {
			r.h("Event", "ChannelHungup").h("Channel", h).id(aid).end()
		}
		r.listComplete("ChannelsHungupListComplete", aid, len(hung))
		return c.reply(r.b) == nil
	}
	if !s.gen.hangupChannel(ch, cause, at) {
		return c.reply(errorReply(aid, "No such channel")) == nil
	}
	return c.reply(new(reply).h("Response", "Success").id(aid).h("Message", "Channel Hungup").end().b) == nil
}

const hexDigits = "0123456789abcdef"

func hex6(n uint64) string {
	var b [6]byte
	for i := 5; i >= 0; i-- {
		b[i] = hexDigits[n&15]
		n >>= 4
	}
	return string(b[:])
}

func appendHex8(b []byte, n uint64) []byte {
	for i := 7; i >= 0; i-- {
		b = append(b, hexDigits[(n>>(uint(i)*4))&15])
	}
	return b
}

func pad6(n int) string {
	s := strconv.Itoa(n)
	for len(s) < 6 {
		s = "0" + s
	}
	return s
}

func eventTV(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000-0700") }
