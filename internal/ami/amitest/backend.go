package amitest

import (
	"sort"
	"strconv"
	"strings"

	"github.com/astguard/astguard/internal/ami"
)

// Realtime makes the server read what sorcery.conf and extconfig.conf
// would map to a database: the PJSIP auths (ps_auths) and the chan_sip
// peers' secrets (sippeers). Endpoints, aors and the peers' other
// settings stay in pjsip.conf and sip.conf. Each function is called with
// the server's lock held, whenever Asterisk would read the row (a PJSIP
// endpoint's auth at every use unless a memory cache holds it; a chan_sip
// peer's secret at every request, as without rtcachefriends).
type Realtime struct {
	// Auth returns the row of PJSIP auth id, by column (password,
	// username, auth_type, md5_cred, realm), and false when there is
	// none; nil: the auths are in pjsip.conf.
	Auth func(id string) (map[string]string, bool)
	// Peer returns the secret and md5secret of chan_sip peer name, and
	// false when the table has no such peer; nil: the peers' secrets are
	// in sip.conf.
	Peer func(name string) (secret, md5secret string, ok bool)
	// AuthCache names a sorcery memory cache in front of the auths
	// (sorcery.conf: auth/cache = memory_cache,name=...): an auth read
	// once is kept until SorceryMemoryCacheExpireObject expires it.
	AuthCache string
}

// Regenerate, when set in Options, stands for FreePBX: at every reload of
// everything (the Reload action without Module, Command "reload" or "core
// reload"), the files it returns (by name: "sip.conf",
// "sip_additional.conf", "pjsip.conf") replace the server's before the
// modules reload, as `fwconsole reload` writes them from FreePBX's
// database before it has Asterisk reload. An error leaves the files as
// they were.
type Regenerate func() (map[string]string, error)

// authRow returns auth id as Asterisk has it: from the realtime table
// (through the memory cache), else from pjsip.conf. Callers hold s.mu.
func (s *Server) authRow(id string) (map[string]string, bool) {
	rt := s.opts.Realtime
	if rt == nil || rt.Auth == nil {
		c := s.files["pjsip.conf"].find(id, "type=auth")
		if c == nil {
			return nil, false
		}
		row := map[string]string{}
		for _, k := range []string{"password", "username", "auth_type", "md5_cred", "password_digest", "realm"} {
			row[k] = c.get(k)
		}
		return row, true
	}
	if row, ok := s.authCache[id]; ok {
		return row, true
	}
	row, ok := rt.Auth(id)
	if ok && rt.AuthCache != "" {
		s.authCache[id] = row
	}
	return row, ok
}

// pjsipPassword is the credentials of endpoint ep as Asterisk would use
// them now, with realtime auths. Callers hold s.mu.
func (s *Server) pjsipPassword(ep string) (string, bool) {
	c := s.pjsipEndpoint(ep)
	if c == nil || c.get("auth") == "" {
		return "", false
	}
	row, ok := s.authRow(c.get("auth"))
	if !ok {
		return "", false
	}
	return row["password"] + "\x00" + row["password_digest"] + "\x00" + row["md5_cred"], true
}

// sipSecret is the credentials of chan_sip peer name from the realtime
// table. Callers hold s.mu.
func (s *Server) sipSecret(name string) (string, bool) {
	sec, md5, ok := s.opts.Realtime.Peer(name)
	return sec + "\x00" + md5, ok
}

// startRealtime takes the realtime rows as they are at the start as each
// extension's original secret, and has the model read them live from then
// on. Callers hold s.mu (or own s).
func (s *Server) startRealtime() {
	rt := s.opts.Realtime
	if rt == nil {
		return
	}
	s.authCache = map[string]map[string]string{}
	if rt.Auth != nil {
		s.pbx.origPJ, s.pbx.pjAccount = map[string]string{}, map[string]string{}
		for _, ep := range s.files["pjsip.conf"].cats {
			if !strings.EqualFold(ep.get("type"), "endpoint") || ep.get("auth") == "" {
				continue
			}
			if pw, ok := s.pjsipPassword(ep.name); ok {
				s.pbx.origPJ[ep.name] = pw
				row, _ := s.authRow(ep.get("auth"))
				user := row["username"]
				if user == "" {
					user = ep.name
				}
				s.pbx.pjAccount[user] = ep.name
			}
		}
		s.authCache = map[string]map[string]string{} // the start read nothing into the cache
		s.pbx.livePJ = s.pjsipPassword
	}
	if rt.Peer != nil {
		for _, c := range s.sipPeers() {
			if sec, ok := s.sipSecret(c.name); ok {
				s.pbx.origSIP[c.name] = sec
			}
		}
		s.pbx.liveSIP = s.sipSecret
	}
}

// actPJSIPShowEndpoints lists the endpoints of pjsip.conf as
// res_pjsip/pjsip_configuration.c's format_ami_endpoints does (not
// recorded): one EndpointList each, by name, then EndpointListComplete.
func (s *Server) actPJSIPShowEndpoints(q *req) bool {
	var eps []*confCat
	for _, c := range s.files["pjsip.conf"].cats {
		if strings.EqualFold(c.get("type"), "endpoint") {
			eps = append(eps, c)
		}
	}
	if len(eps) == 0 {
		q.c.enqueue(append(errorReply(q.aid, "No endpoints found"), '\r', '\n'), false)
		return true
	}
	sort.SliceStable(eps, func(i, j int) bool { return eps[i].name < eps[j].name })
	r := listStart(q.aid, "A listing of Endpoints follows, presented as EndpointList events")
	for _, ep := range eps {
		active := 0
		for _, ch := range s.pbx.live() {
			if ch.tech == ami.TechPJSIP && ch.owner == ep.name {
				active++
			}
		}
		state := "Unavailable"
		contacts := ""
		if ct := s.pbx.contacts[ep.name]; ct != nil {
			state, contacts = "Not in use", ep.get("aors")+"/"+ct.uri()+","
		}
		if active > 0 {
			state = "In use"
		}
		r.h("Event", "EndpointList").id(q.aid).h("ObjectType", "endpoint").h("ObjectName", ep.name).
			h("Transport", ep.get("transport")).h("Aor", ep.get("aors")).h("Auths", ep.get("auth")).
			h("OutboundAuths", ep.get("outbound_auth")).h("Contacts", contacts).h("DeviceState", state).
			h("ActiveChannels", strconv.Itoa(active)).end()
	}
	r.listComplete("EndpointListComplete", q.aid, len(eps))
	q.c.enqueue(r.b, false)
	return true
}

// actSorceryMemoryCacheExpireObject answers as res_sorcery_memory_cache.c:
// its messages end in a newline, so an empty line follows each reply.
func (s *Server) actSorceryMemoryCacheExpireObject(q *req) bool {
	cache, obj := q.get("Cache"), q.get("Object")
	answer := func(b []byte) { q.c.enqueue(append(b, '\r', '\n'), false) }
	rt := s.opts.Realtime
	switch {
	case cache == "":
		answer(errorReply(q.aid, "SorceryMemoryCacheExpireObject requires that a cache name be provided."))
	case obj == "":
		answer(errorReply(q.aid, "SorceryMemoryCacheExpireObject requires that an object name be provided"))
	case rt == nil || rt.AuthCache == "" || cache != rt.AuthCache:
		answer(errorReply(q.aid, "The provided cache does not exist"))
	default:
		if _, ok := s.authCache[obj]; !ok {
			answer(errorReply(q.aid, "The provided object could not be expired from the cache"))
			return true
		}
		delete(s.authCache, obj)
		s.expired = append(s.expired, cache+"/"+obj)
		answer(ackReply(q.aid, "The provided object was expired from the cache"))
	}
	return true
}

// Expired returns the objects SorceryMemoryCacheExpireObject expired, as
// "cache/object", in order.
func (s *Server) Expired() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.expired...)
}

// regenerate replaces the files with those Options.Regenerate writes.
// Callers hold s.mu.
func (s *Server) regenerate() {
	if s.opts.Regenerate == nil {
		return
	}
	files, err := s.opts.Regenerate()
	if err != nil {
		s.logf("amitest: regenerate: %v", err)
		return
	}
	for name, text := range files {
		s.files[name] = parseConf(name, text)
	}
	s.regenerated++
}

// Regenerated returns how many reloads of everything had the files
// written again by Options.Regenerate.
func (s *Server) Regenerated() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.regenerated
}
