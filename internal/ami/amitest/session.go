package amitest

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// session is one AMI connection.
type session struct {
	srv        *Server
	id         int
	conn       net.Conn
	remoteIP   string
	remotePort int
	quit       chan struct{} // closed when the session ends
	closeOnce  sync.Once
	wake       chan struct{} // a token when there is something to write

	// Guarded by srv.mu.
	authed    bool
	user      string
	mask      uint32 // event classes the session wants
	loginAt   time.Time
	challenge string

	// Guarded by qmu.
	qmu        sync.Mutex
	out        [][]byte
	queued     int
	closeAfter bool // close once out is written; refuse more
	overflow   bool // more than maxQueued waiting: drop the session
}

func newSession(s *Server, id int, conn net.Conn) *session {
	c := &session{
		srv:  s,
		id:   id,
		conn: conn,
		quit: make(chan struct{}),
		wake: make(chan struct{}, 1),
	}
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		c.remoteIP, c.remotePort = a.IP.String(), a.Port
	}
	return c
}

// sessionID is the fake memory address Asterisk prints as SessionID.
func (c *session) sessionID() string { return fmt.Sprintf("0x7fa2cc%06x", 0x016a90+c.id*0x1c0) }

func (c *session) remoteAddress() string {
	return fmt.Sprintf("IPV4/TCP/%s/%d", c.remoteIP, c.remotePort)
}

// enqueue queues bytes for the writer; closeAfter makes the writer close the
// session once they are written. Never blocks.
func (c *session) enqueue(b []byte, closeAfter bool) {
	c.qmu.Lock()
	if c.closeAfter {
		c.qmu.Unlock()
		return
	}
	c.out = append(c.out, b)
	c.queued += len(b)
	c.closeAfter = closeAfter
	if c.queued > maxQueued {
		c.overflow = true
	}
	c.qmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes what is queued, each chunk under WriteTimeout.
func (c *session) writeLoop() {
	s := c.srv
	defer s.wg.Done()
	for {
		select {
		case <-c.wake:
		case <-c.quit:
			return
		}
		if !s.waitRunning(c.quit) {
			return
		}
		c.qmu.Lock()
		out, closeAfter, overflow := c.out, c.closeAfter, c.overflow
		c.out, c.queued = nil, 0
		c.qmu.Unlock()
		if overflow {
			s.drop(c, "too much queued: slow reader")
			return
		}
		// Write whole frames, up to 64 KiB per write, each write within the
		// timeout: a reader that keeps up is never dropped, one that stops
		// reading is.
		for len(out) > 0 {
			var chunk []byte
			for len(out) > 0 && (len(chunk) == 0 || len(chunk)+len(out[0]) <= 64<<10) {
				chunk = append(chunk, out[0]...)
				out = out[1:]
			}
			c.conn.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
			if _, err := c.conn.Write(chunk); err != nil {
				s.drop(c, "write failed (slow or gone reader): "+err.Error())
				return
			}
		}
		if closeAfter {
			s.drop(c, "closed after reply")
			return
		}
	}
}

// serve reads and answers the actions of one session.
func (s *Server) serve(c *session) {
	defer s.wg.Done()
	s.mu.Lock()
	noBanner := s.noBanner
	s.mu.Unlock()
	if !noBanner {
		c.enqueue([]byte(s.opts.Banner+"\r\n"), false)
	}
	r := ami.NewReader(c.conn, ami.ReaderOptions{})
	var m ami.Message
	for {
		if !s.waitRunning(c.quit) || !s.waitHearing(c) {
			return
		}
		err := r.Next(&m)
		if err != nil {
			var me *ami.MessageError
			if errors.As(err, &me) {
				continue
			}
			s.drop(c, "read: "+err.Error())
			return
		}
		if !s.waitRunning(c.quit) {
			return
		}
		if !s.handle(c, &m) {
			// The last reply is queued with closeAfter: the writer ends
			// the session once it is written.
			return
		}
	}
}

// reply builds a response frame.
type reply struct{ b []byte }

func (r *reply) h(k, v string) *reply {
	r.b = append(r.b, k...)
	r.b = append(r.b, ": "...)
	r.b = append(r.b, v...)
	r.b = append(r.b, '\r', '\n')
	return r
}

// id adds the ActionID header when the action had a non-empty one.
func (r *reply) id(aid string) *reply {
	if aid != "" {
		r.h("ActionID", aid)
	}
	return r
}

func (r *reply) end() *reply {
	r.b = append(r.b, '\r', '\n')
	return r
}

func (r *reply) fields(kv [][2]string) *reply {
	for _, f := range kv {
		r.h(f[0], f[1])
	}
	return r
}

func errorReply(aid, msg string) []byte {
	return new(reply).h("Response", "Error").id(aid).h("Message", msg).end().b
}

func ackReply(aid, msg string) []byte {
	r := new(reply).h("Response", "Success").id(aid)
	if msg != "" {
		r.h("Message", msg)
	}
	return r.end().b
}

// req is an action being handled.
type req struct {
	c    *session
	m    *ami.Message
	name string
	aid  string
}

func (q *req) get(k string) string { return q.m.Get(k) }

// handle answers one action. It returns false when the session must end
// (the reply is queued with closeAfter).
func (s *Server) handle(c *session, m *ami.Message) bool {
	name := m.Get("Action")
	q := &req{c: c, m: m, name: name, aid: m.Get("ActionID")}
	hdrs := make([][2]string, m.Len())
	for i := range hdrs {
		hdrs[i] = [2]string{string(m.Key(i)), string(m.Value(i))}
	}
	lname := strings.ToLower(name)

	s.mu.Lock()
	s.actions = append(s.actions, Action{Session: c.id, Name: name, Headers: hdrs, At: time.Now()})
	s.logf("amitest: session %d action %q", c.id, name)
	if name == "" {
		c.enqueue(errorReply(q.aid, "Missing action in request"), false)
		s.mu.Unlock()
		return true
	}
	if !c.authed && lname != "login" && lname != "logoff" && lname != "challenge" {
		c.enqueue(errorReply(q.aid, "Permission denied"), false)
		s.mu.Unlock()
		return true
	}
	if f := s.fails[lname]; f != nil {
		f.times--
		if f.times <= 0 {
			delete(s.fails, lname)
		}
		c.enqueue(errorReply(q.aid, f.message), false)
		s.mu.Unlock()
		return true
	}
	if lname == "login" {
		ok := s.login(q)
		s.mu.Unlock()
		if ok {
			return true
		}
		// Asterisk sleeps about a second, answers, then hangs up.
		t := time.NewTimer(s.opts.LoginFailDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.quit:
			return false
		case <-s.quit:
			return false
		}
		c.enqueue(errorReply(q.aid, "Authentication failed"), true)
		return false
	}
	defer s.mu.Unlock()
	h := actionHandlers[lname]
	if s.opts.Version.legacy() {
		if _, ok := pjsipActions[lname]; ok {
			h = nil // PJSIP does not exist before Asterisk 12
		}
	}
	if h == nil {
		c.enqueue(errorReply(q.aid, "Invalid/unknown command: "+name+". Use Action: ListCommands to show available commands."), false)
		s.securityEvent(c, "RequestBadFormat", "Error", 1, [][2]string{{"RequestType", "Action: " + name}}, true)
		return true
	}
	return h(s, q)
}

// actionHandlers answer actions, holding s.mu. They return false to end the
// session.
var actionHandlers map[string]func(*Server, *req) bool

// pjsipActions are the actions of res_pjsip (Asterisk 12 and later) and of
// res_sorcery_memory_cache (13.5 and later).
var pjsipActions = map[string]struct{}{"pjsipshowcontacts": {}, "pjsipshowendpoint": {}, "pjsiphangup": {}, "sorcerymemorycacheexpireobject": {}, "pjsipshowendpoints": {}}

func init() {
	actionHandlers = map[string]func(*Server, *req) bool{
		"ping":              (*Server).actPing,
		"logoff":            (*Server).actLogoff,
		"challenge":         (*Server).actChallenge,
		"events":            (*Server).actEvents,
		"coreshowchannels":  (*Server).actCoreShowChannels,
		"sippeers":          (*Server).actSIPpeers,
		"sipshowpeer":       (*Server).actSIPshowpeer,
		"pjsipshowcontacts": (*Server).actPJSIPShowContacts,
		"pjsipshowendpoint": (*Server).actPJSIPShowEndpoint,
		"getvar":            (*Server).actGetvar,
		"hangup":            (*Server).actHangup,
		"pjsiphangup":       (*Server).actPJSIPHangup,
		"getconfig":         (*Server).actGetConfig,
		"updateconfig":      (*Server).actUpdateConfig,
		"command":           (*Server).actCommand,
		"reload":            (*Server).actReload,

		"sorcerymemorycacheexpireobject": (*Server).actSorceryMemoryCacheExpireObject,
		"pjsipshowendpoints":             (*Server).actPJSIPShowEndpoints,
	}
}

// login checks the credentials and, on success, queues the reply together
// with FullyBooted and SuccessfulAuth in one write. Callers hold s.mu.
func (s *Server) login(q *req) bool {
	c := q.c
	user, secret := q.get("Username"), q.get("Secret")
	// As manager.c's authenticate: the user name is matched ignoring case;
	// an MD5 login needs a challenge asked first on this connection and a
	// Key equal to the lower-case hex md5 of challenge and secret (compared
	// exactly); otherwise the Secret must match. Each failure but the MD5
	// login without a challenge (only a debug line in Asterisk) raises a
	// security event.
	var (
		ok       bool
		typ, ver = "InvalidAccountID", 1
		extra    [][2]string
	)
	switch {
	case user == "":
		typ = ""
	case !strings.EqualFold(user, s.opts.Username):
	case strings.EqualFold(q.get("AuthType"), "md5"):
		sum := md5.Sum([]byte(c.challenge + s.opts.Secret))
		want := hex.EncodeToString(sum[:])
		key := q.get("Key")
		switch {
		case c.challenge == "" || key == "":
			typ = ""
		case key == want:
			ok = true
		default:
			// Asterisk has not copied the user name into the session yet:
			// the event's AccountID is empty.
			typ, ver, user = "ChallengeResponseFailed", 1, ""
			extra = [][2]string{{"Challenge", c.challenge}, {"Response", key}, {"ExpectedResponse", want}}
		}
	case secret == s.opts.Secret:
		ok = true
	default:
		typ, ver = "InvalidPassword", 2
	}
	if !ok {
		// The failure is a security event for the other sessions.
		if typ != "" {
			s.securityEventAs(c, user, typ, "Error", ver, extra, false)
		}
		s.logf("amitest: session %d login failed", c.id)
		return false
	}
	c.authed, c.user, c.loginAt = true, s.opts.Username, time.Now()
	c.mask = allClasses
	if q.m.Has("Events") {
		c.mask = eventMask(q.get("Events"))
	}
	r := new(reply).h("Response", "Success").id(q.aid).h("Message", "Authentication accepted").end()
	switch {
	case c.mask&classSystem == 0:
	case s.opts.Version.legacy():
		r.h("Event", "FullyBooted").h("Privilege", "system,all").h("Status", "Fully Booted").end()
	default:
		up := strconv.Itoa(int(time.Since(s.start).Seconds()))
		r.h("Event", "FullyBooted").h("Privilege", "system,all").h("Uptime", up).h("LastReload", up).h("Status", "Fully Booted").end()
	}
	auth := s.securityFrame(c, c.user, "SuccessfulAuth", "Informational", 1, [][2]string{{"UsingPassword", "0"}})
	noSecurity := s.opts.Version.legacy() // Asterisk 1.8 and 11 send none
	if c.mask&classSecurity != 0 && !noSecurity {
		r.b = append(r.b, auth...)
	}
	c.enqueue(r.b, false)
	// Every other session with security events sees the login too.
	for _, id := range s.sessionIDs() {
		o := s.sessions[id]
		if o != c && o.authed && o.mask&classSecurity != 0 && !noSecurity {
			o.enqueue(auth, false)
		}
	}
	s.logf("amitest: session %d logged in", c.id)
	if s.opts.AutoPlay {
		s.playLocked()
	}
	return true
}

// securityEvent broadcasts an AMI security event about session c.
func (s *Server) securityEvent(c *session, typ, severity string, version int, extra [][2]string, withAccount bool) {
	acct := ""
	if withAccount {
		acct = c.user
	}
	s.securityEventAs(c, acct, typ, severity, version, extra, true)
}

// securityEventAs broadcasts an AMI security event; includeSelf says
// whether c gets it too.
func (s *Server) securityEventAs(c *session, account, typ, severity string, version int, extra [][2]string, includeSelf bool) {
	if s.opts.Version.legacy() {
		return // Asterisk 1.8 and 11 send no security events over AMI
	}
	f := s.securityFrame(c, account, typ, severity, version, extra)
	for _, id := range s.sessionIDs() {
		o := s.sessions[id]
		if (o != c || includeSelf) && o.authed && o.mask&classSecurity != 0 {
			o.enqueue(f, false)
		}
	}
}

// securityFrame builds an AMI security event (Service AMI) as Asterisk 20
// prints them: the SuccessfulAuth and RequestBadFormat frames of the
// dialog. For RequestBadFormat the AccountID comes last, as recorded.
func (s *Server) securityFrame(c *session, account, typ, severity string, version int, extra [][2]string) []byte {
	now := eventTV(time.Now())
	sessTV := now
	if !c.loginAt.IsZero() {
		sessTV = eventTV(c.loginAt)
	}
	r := new(reply).h("Event", typ).h("Privilege", "security,all").h("EventTV", now).
		h("Severity", severity).h("Service", "AMI").h("EventVersion", strconv.Itoa(version))
	if typ != "RequestBadFormat" {
		r.h("AccountID", account)
	}
	r.h("SessionID", c.sessionID()).
		h("LocalAddress", fmt.Sprintf("IPV4/TCP/127.0.0.1/%d", s.port)).
		h("RemoteAddress", c.remoteAddress())
	r.fields(extra)
	r.h("SessionTV", sessTV)
	if typ == "RequestBadFormat" && account != "" {
		r.h("AccountID", account)
	}
	return r.end().b
}

// eventTV formats a time as Asterisk's EventTV.
func eventTV(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000-0700")
}
