package loadgen

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// The minimal AMI server: banner, Challenge (MD5), Login in plain text or
// with the challenge's MD5 key (Success with FullyBooted and SuccessfulAuth
// in one write, as Asterisk 20 does; its Events header sets the session's
// event mask), Events, Ping, Hangup
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
	// challenge is the MD5 login's challenge (the serve goroutine's).
	challenge string
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
	nice     int // of the threads reading the guard's actions
	start    time.Time
	logins   atomic.Uint64 // successful logins
	mu       sync.Mutex
	conns    []*conn
	nextID   int
	wg       sync.WaitGroup
	actions  sync.Map // name -> *atomic.Uint64
	maskSet  chan struct{}
	maskOnce sync.Once
}

// newServer serves AMI on ln.
func newServer(ln net.Listener, user, secret string, gen *generator, nice int) *server {
	s := &server{ln: ln, user: user, secret: secret, gen: gen, nice: nice, start: time.Now(), maskSet: make(chan struct{})}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

// close stops accepting and closes the sessions (the guard is stopped
// first: it would reconnect).
func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
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

// actionCount is how many actions of that name (lower case) arrived.
func (s *server) actionCount(name string) uint64 {
	if v, ok := s.actions.Load(name); ok {
		return v.(*atomic.Uint64).Load()
	}
	return 0
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

// serve reads the session's actions on an OS thread of its own at the
// generator's priority, so that the arrival time of a Hangup is taken when
// it arrives, whatever else wants the CPU. The thread ends with the
// goroutine (never unlocked).
func (s *server) serve(c *conn) {
	defer s.wg.Done()
	defer c.c.Close()
	runtime.LockOSThread()
	_ = setThreadNice(s.nice)
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
		return c.write(errorReply(aid, "Permission denied")) == nil
	}
	switch name {
	case "challenge":
		if !strings.EqualFold(m.Get("AuthType"), "md5") {
			return c.write(errorReply(aid, "Must specify AuthType")) == nil
		}
		c.challenge = strconv.FormatInt(time.Now().UnixNano()%(1<<31), 10)
		return c.write(new(reply).h("Response", "Success").id(aid).h("Challenge", c.challenge).end().b) == nil
	case "login":
		ok := m.Get("Username") == s.user && m.Get("Secret") == s.secret
		if strings.EqualFold(m.Get("AuthType"), "md5") {
			sum := md5.Sum([]byte(c.challenge + s.secret))
			ok = m.Get("Username") == s.user && c.challenge != "" && m.Get("Key") == hex.EncodeToString(sum[:])
		}
		if !ok {
			time.Sleep(time.Second)
			_ = c.write(errorReply(aid, "Authentication failed"))
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
		err := c.write(r.b)
		c.authed.Store(true)
		s.logins.Add(1)
		return err == nil
	case "logoff":
		_ = c.write(new(reply).h("Response", "Goodbye").id(aid).h("Message", "Thanks for all the fish.").end().b)
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
		err := c.write(new(reply).h("Response", "Success").id(aid).h("Events", state).end().b)
		if mask != 0 {
			s.maskOnce.Do(func() { close(s.maskSet) })
		}
		return err == nil
	case "ping":
		now := time.Now()
		ts := strconv.FormatInt(now.Unix(), 10) + "." + pad6(now.Nanosecond()/1000)
		return c.write(new(reply).h("Response", "Success").id(aid).h("Ping", "Pong").h("Timestamp", ts).end().b) == nil
	case "coreshowchannels":
		// The generator's calls are not listed: the guard learns them from
		// the stream (it connects before the first call).
		return c.write(listStart(aid, "Channels will follow").listComplete("CoreShowChannelsComplete", aid, 0).b) == nil
	case "sippeers":
		return c.write(listStart(aid, "Peer status list will follow").listComplete("PeerlistComplete", aid, 0).b) == nil
	case "pjsipshowcontacts":
		return c.write(append(errorReply(aid, "No Contacts found"), '\r', '\n')) == nil
	case "getconfig":
		return c.write(errorReply(aid, "Config file not found")) == nil
	case "updateconfig":
		return c.write(errorReply(aid, "Config file not found")) == nil
	case "getvar":
		v, ok := s.gen.peerAddr(m.Get("Channel"), m.Get("Variable"))
		if !ok {
			return c.write(errorReply(aid, "No such channel")) == nil
		}
		return c.write(new(reply).h("Response", "Success").id(aid).h("Variable", m.Get("Variable")).h("Value", v).end().b) == nil
	case "hangup":
		return s.hangup(c, m, aid, at)
	}
	return c.write(errorReply(aid, "Invalid/unknown command: "+m.Get("Action")+". Use Action: ListCommands to show available commands.")) == nil
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
			return c.write(errorReply(aid, "Regex compile failed on: "+ch[1:len(ch)-1])) == nil
		}
		hung := s.gen.hangupMatching(ch, re, cause, at)
		r := listStart(aid, "Channels hung up will follow")
		for _, h := range hung {
			r.h("Event", "ChannelHungup").h("Channel", h).id(aid).end()
		}
		r.listComplete("ChannelsHungupListComplete", aid, len(hung))
		return c.write(r.b) == nil
	}
	if !s.gen.hangupChannel(ch, cause, at) {
		return c.write(errorReply(aid, "No such channel")) == nil
	}
	return c.write(new(reply).h("Response", "Success").id(aid).h("Message", "Channel Hungup").end().b) == nil
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
