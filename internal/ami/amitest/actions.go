package amitest

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// All handlers run with s.mu held.

func (s *Server) actPing(q *req) bool {
	now := time.Now()
	ts := fmt.Sprintf("%d.%06d", now.Unix(), now.Nanosecond()/1000)
	q.c.enqueue(new(reply).h("Response", "Success").id(q.aid).h("Ping", "Pong").h("Timestamp", ts).end().b, false)
	return true
}

func (s *Server) actLogoff(q *req) bool {
	q.c.enqueue(new(reply).h("Response", "Goodbye").id(q.aid).h("Message", "Thanks for all the fish.").end().b, true)
	return false
}

func (s *Server) actChallenge(q *req) bool {
	if !strings.EqualFold(q.get("AuthType"), "md5") {
		q.c.enqueue(errorReply(q.aid, "Must specify AuthType"), false)
		return true
	}
	if q.c.challenge == "" {
		// manager.c prints ast_random() with %ld: a decimal number below 2^31.
		q.c.challenge = strconv.FormatInt(rand.Int64N(1<<31), 10)
	}
	q.c.enqueue(new(reply).h("Response", "Success").id(q.aid).h("Challenge", q.c.challenge).end().b, false)
	return true
}

// actEvents sets the session's event mask (manager.c action_events).
func (s *Server) actEvents(q *req) bool {
	q.c.mask = eventMask(q.get("EventMask"))
	state := "On"
	if q.c.mask == 0 {
		state = "Off"
	}
	q.c.enqueue(new(reply).h("Response", "Success").id(q.aid).h("Events", state).end().b, false)
	return true
}

// listStart is the first reply of a list action.
func listStart(aid, msg string) *reply {
	return new(reply).h("Response", "Success").id(aid).h("EventList", "start").h("Message", msg).end()
}

// listComplete ends a list.
func (r *reply) listComplete(event, aid string, n int) *reply {
	return r.h("Event", event).id(aid).h("EventList", "Complete").h("ListItems", strconv.Itoa(n)).end()
}

func (s *Server) actCoreShowChannels(q *req) bool {
	if s.opts.Version.legacy() {
		return s.actCoreShowChannels11(q)
	}
	r := listStart(q.aid, "Channels will follow")
	chans := s.pbx.live()
	now := s.pbx.now()
	for _, ch := range chans {
		d := now.Sub(ch.created)
		if d < 0 {
			d = 0
		}
		secs := int(d.Seconds())
		r.h("Event", "CoreShowChannel").id(q.aid).snapshot(ch).
			h("Application", ch.app).h("ApplicationData", ch.appData).
			h("Duration", fmt.Sprintf("%02d:%02d:%02d", secs/3600, secs/60%60, secs%60)).
			h("BridgeId", ch.bridge).end()
	}
	r.listComplete("CoreShowChannelsComplete", q.aid, len(chans))
	q.c.enqueue(r.b, false)
	return true
}

// sipPeers returns the chan_sip peers of sip.conf, by name.
func (s *Server) sipPeers() []*confCat {
	var out []*confCat
	for _, c := range s.files["sip.conf"].cats {
		if strings.EqualFold(c.name, "general") || strings.HasPrefix(c.rest, "(!") {
			continue
		}
		out = append(out, c)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (s *Server) sipPeer(name string) *confCat {
	for _, c := range s.sipPeers() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// peerAddress is what chan_sip shows as a peer's address: the registration
// of a dynamic peer, the host of a static one.
func (s *Server) peerAddress(c *confCat) (ip, port string, registered bool) {
	if st := s.pbx.peers[c.name]; st != nil {
		return st.ip, st.port, true
	}
	if h := c.get("host"); h != "" && !strings.EqualFold(h, "dynamic") {
		port = c.get("port")
		if port == "" {
			port = "5060"
		}
		return h, port, false
	}
	return "", "", false
}

// userAgents are the user agents the lab's phones sent (recorded in the
// dialogs); the AMI events do not carry them.
var userAgents = map[string]string{
	"SIP/200":   "Zoiper rv2.10.12",
	"PJSIP/300": "friendly-scanner",
	"PJSIP/301": "Grandstream GXP2170 1.0.11.23",
}

// actSIPpeers is chan_sip's SIPpeers. It is not in the dialogs: the format
// is chan_sip's manager_sip_show_peers (PeerEntry events and
// PeerlistComplete), synthesized.
func (s *Server) actSIPpeers(q *req) bool {
	if s.opts.Version.legacy() {
		return s.actSIPpeers11(q)
	}
	r := listStart(q.aid, "Peer status list will follow")
	peers := s.sipPeers()
	for _, c := range peers {
		ip, port, _ := s.peerAddress(c)
		if ip == "" {
			ip, port = "-none-", "0"
		}
		dyn := "no"
		if strings.EqualFold(c.get("host"), "dynamic") {
			dyn = "yes"
		}
		r.h("Event", "PeerEntry").id(q.aid).h("Channeltype", "SIP").h("ObjectName", c.name).
			h("ChanObjectType", "peer").h("IPaddress", ip).h("IPport", port).h("Dynamic", dyn).
			h("AutoForcerport", "yes").h("Forcerport", "no").h("AutoComedia", "no").h("Comedia", "no").
			h("VideoSupport", "no").h("TextSupport", "no").h("ACL", "no").h("Status", "Unmonitored").
			h("RealtimeDevice", "no").h("Description", c.get("description")).h("Accountcode", c.get("accountcode")).end()
	}
	r.listComplete("PeerlistComplete", q.aid, len(peers))
	q.c.enqueue(r.b, false)
	return true
}

// codecs renders allow= lines as Asterisk's "(ulaw|alaw)".
func codecs(c *confCat, general *confCat) string {
	var list []string
	for _, src := range []*confCat{general, c} {
		if src == nil {
			continue
		}
		for _, it := range src.vars() {
			switch strings.ToLower(it.name) {
			case "disallow":
				if strings.EqualFold(it.value, "all") {
					list = nil
				}
			case "allow":
				for _, x := range strings.Split(it.value, ",") {
					if x = strings.TrimSpace(x); x != "" && !contains(list, x) {
						list = append(list, x)
					}
				}
			}
		}
	}
	return "(" + strings.Join(list, "|") + ")"
}

func contains(list []string, x string) bool {
	for _, y := range list {
		if y == x {
			return true
		}
	}
	return false
}

// actSIPshowpeer answers as the dialogs: the recorded header list with the
// peer's own values.
func (s *Server) actSIPshowpeer(q *req) bool {
	name := q.get("Peer")
	if name == "" {
		q.c.enqueue(errorReply(q.aid, "Peer: <name> missing."), false)
		return true
	}
	c := s.sipPeer(name)
	if c == nil {
		// Asterisk's message ends in a newline: an extra empty line follows.
		q.c.enqueue(append(errorReply(q.aid, "Peer "+name+" not found."), '\r', '\n'), false)
		return true
	}
	general := s.files["sip.conf"].find("general", "")
	ip, port, registered := s.peerAddress(c)
	dynamic := strings.EqualFold(c.get("host"), "dynamic")
	r := new(reply).h("Response", "Success").id(q.aid)
	fields := sipShowPeerFields
	if s.opts.Version.legacy() {
		fields = sipShowPeerFields11
	}
	for _, f := range fields {
		k, v := f[0], f[1]
		switch k {
		case "ObjectName", "Default-Username":
			v = c.name
			if k == "Default-Username" && !registered {
				v = c.get("defaultuser")
			}
		case "SecretExist":
			v = yn(c.get("secret") != "")
		case "RemoteSecretExist":
			v = yn(c.get("remotesecret") != "")
		case "MD5SecretExist":
			v = yn(c.get("md5secret") != "")
		case "Context":
			v = c.get("context")
			if v == "" && general != nil {
				v = general.get("context")
			}
			if v == "" {
				v = "default"
			}
		case "Dynamic":
			v = yn(dynamic)
		case "Callerid":
			v = c.get("callerid")
			if v == "" {
				v = `"" <>`
			}
		case "RegExpire":
			v = "-1 seconds"
			if st := s.pbx.peers[c.name]; st != nil && !st.regAt.IsZero() {
				left := st.regAt.Add(3600 * time.Second).Sub(s.pbx.now())
				v = strconv.Itoa(int(left.Seconds())) + " seconds"
			}
		case "Address-IP":
			v = ip
			if v == "" {
				v = "(null)"
			}
		case "Address-Port":
			v = port
			if v == "" {
				v = "0"
			}
		case "Default-addr-IP":
			v = "(null)"
			if !dynamic && ip != "" {
				v = ip
			}
		case "Default-addr-port":
			v = "0"
			if !dynamic && port != "" {
				v = port
			}
		case "Codecs":
			v = codecs(c, general)
		case "CodecOrder": // Asterisk 11: "ulaw,alaw"
			v = strings.ReplaceAll(strings.Trim(codecs(c, general), "()"), "|", ",")
		case "SIP-Useragent":
			v = ""
			if registered {
				v = userAgents["SIP/"+c.name]
			}
		case "Reg-Contact":
			v = ""
			if registered {
				v = "sip:" + c.name + "@" + ip + ":" + port
			}
		case "Description":
			v = c.get("description")
		}
		r.h(k, v)
	}
	q.c.enqueue(r.end().b, false)
	return true
}

func yn(b bool) string {
	if b {
		return "Y"
	}
	return "N"
}

// pjsipEndpoint returns the endpoint section of pjsip.conf named name.
func (s *Server) pjsipEndpoint(name string) *confCat {
	return s.files["pjsip.conf"].find(name, "type=endpoint")
}

func (s *Server) sortedContacts() []*contact {
	var out []*contact
	for _, ct := range s.pbx.contacts {
		out = append(out, ct)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].endpoint < out[j].endpoint })
	return out
}

func (ct *contact) uri() string { return "sip:" + ct.endpoint + "@" + ct.ip + ":" + ct.port }
func (ct *contact) id() string {
	return ct.endpoint + ";@" + fakeHex(32, "contact", ct.endpoint, ct.uri())
}
func (ct *contact) expiry() int64 { return ct.at.Add(3600 * time.Second).Unix() }

// actPJSIPShowContacts answers as the dialogs, one ContactList per contact
// the transcript registered (the first PJSIP SuccessfulAuth of each
// endpoint: its address and Call-ID).
func (s *Server) actPJSIPShowContacts(q *req) bool {
	cts := s.sortedContacts()
	if len(cts) == 0 {
		q.c.enqueue(append(errorReply(q.aid, "No Contacts found"), '\r', '\n'), false)
		return true
	}
	r := listStart(q.aid, "A listing of Contacts follows, presented as ContactList events")
	for _, ct := range cts {
		r.h("Event", "ContactList").id(q.aid)
		for _, f := range contactListFields {
			k, v := f[0], f[1]
			switch k {
			case "ObjectName":
				v = ct.id()
			case "ViaAddr":
				v = ct.ip
			case "ViaPort":
				v = ct.port
			case "CallId":
				v = ct.callID
			case "Endpoint":
				v = ct.endpoint
			case "Uri":
				v = ct.uri()
			case "UserAgent":
				v = userAgents["PJSIP/"+ct.endpoint]
			case "ExpirationTime":
				v = strconv.FormatInt(ct.expiry(), 10)
			}
			r.h(k, v)
		}
		r.end()
	}
	r.listComplete("ContactListComplete", q.aid, len(cts))
	q.c.enqueue(r.b, false)
	return true
}

// actPJSIPShowEndpoint answers as the asterisk-22 dialog: EndpointDetail,
// AuthDetail, AorDetail, one ContactStatusDetail per contact, then
// EndpointDetailComplete.
func (s *Server) actPJSIPShowEndpoint(q *req) bool {
	name := q.get("Endpoint")
	if name == "" {
		q.c.enqueue(errorReply(q.aid, "Endpoint parameter missing."), false)
		return true
	}
	ep := s.pjsipEndpoint(name)
	if ep == nil {
		q.c.enqueue(errorReply(q.aid, "Unable to retrieve endpoint "+name), false)
		return true
	}
	f := s.files["pjsip.conf"]
	active := 0
	for _, ch := range s.pbx.live() {
		if ch.tech == ami.TechPJSIP && ch.owner == name {
			active++
		}
	}
	var cts []*contact
	if ct := s.pbx.contacts[name]; ct != nil {
		cts = append(cts, ct)
	}
	r := listStart(q.aid, "Following are Events for each object associated with the Endpoint")
	n := 1
	r.h("Event", "EndpointDetail").id(q.aid)
	for _, fl := range endpointDetailFields {
		k, v := fl[0], fl[1]
		switch k {
		case "ObjectName":
			v = name
		case "Aors":
			v = ep.get("aors")
		case "Context":
			v = ep.get("context")
			if v == "" {
				v = "default"
			}
		case "Callerid":
			v = ep.get("callerid")
			if v == "" {
				v = "<unknown>"
			}
		case "Allow":
			v = codecs(ep, nil)
		case "Auth":
			v = ep.get("auth")
		case "DirectMedia":
			v = "true"
			if d := ep.get("direct_media"); d != "" && !isTrue(d) {
				v = "false"
			}
		case "DeviceState":
			switch {
			case active > 0:
				v = "In use"
			case len(cts) > 0:
				v = "Not in use"
			default:
				v = "Unavailable"
			}
		case "ActiveChannels":
			v = strconv.Itoa(active)
		}
		r.h(k, v)
	}
	r.end()
	if a := ep.get("auth"); a != "" {
		// From pjsip.conf, or the realtime table (Options.Realtime).
		if auth, ok := s.authRow(a); ok {
			n++
			r.h("Event", "AuthDetail").id(q.aid)
			for _, fl := range authDetailFields {
				k, v := fl[0], fl[1]
				switch k {
				case "ObjectName":
					v = a
				case "Username":
					v = auth["username"]
				case "Password":
					v = auth["password"]
				case "AuthType":
					v = auth["auth_type"]
					if v == "" {
						v = "userpass"
					}
				case "PasswordDigest":
					v = auth["password_digest"]
				case "Md5Cred":
					v = auth["md5_cred"]
				case "Realm":
					v = auth["realm"]
				case "EndpointName":
					v = name
				}
				r.h(k, v)
			}
			r.end()
		}
	}
	if a := ep.get("aors"); a != "" {
		if aor := f.find(a, "type=aor"); aor != nil {
			n++
			var list []string
			for _, ct := range cts {
				list = append(list, aor.name+"/"+ct.uri())
			}
			r.h("Event", "AorDetail").id(q.aid)
			for _, fl := range aorDetailFields {
				k, v := fl[0], fl[1]
				switch k {
				case "ObjectName":
					v = aor.name
				case "MaxContacts":
					v = aor.get("max_contacts")
					if v == "" {
						v = "0"
					}
				case "Contacts":
					v = strings.Join(list, ",")
				case "TotalContacts", "ContactsRegistered":
					v = strconv.Itoa(len(cts))
				case "EndpointName":
					v = name
				}
				r.h(k, v)
			}
			r.end()
			for _, ct := range cts {
				n++
				r.h("Event", "ContactStatusDetail").id(q.aid)
				for _, fl := range contactStatusDetailFields {
					k, v := fl[0], fl[1]
					switch k {
					case "AOR":
						v = aor.name
					case "URI":
						v = ct.uri()
					case "UserAgent":
						v = userAgents["PJSIP/"+name]
					case "RegExpire":
						v = strconv.FormatInt(ct.expiry(), 10)
					case "ViaAddress":
						v = ct.ip + ":" + ct.port
					case "CallID":
						v = ct.callID
					case "EndpointName":
						v = name
					case "ID":
						v = ct.id()
					}
					r.h(k, v)
				}
				r.end()
			}
		}
	}
	r.listComplete("EndpointDetailComplete", q.aid, n)
	q.c.enqueue(r.b, false)
	return true
}

func isTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "yes", "true", "y", "t", "1", "on":
		return true
	}
	return false
}

// actGetvar answers the channel variables the guard asks for: the source
// address of a live call (see setRemote for how the model knows it).
func (s *Server) actGetvar(q *req) bool {
	name := q.get("Variable")
	if name == "" {
		q.c.enqueue(errorReply(q.aid, "No variable specified"), false)
		return true
	}
	var ch *channel
	if cn := q.get("Channel"); cn != "" {
		if ch = s.pbx.find(cn); ch == nil {
			q.c.enqueue(errorReply(q.aid, "No such channel"), false)
			return true
		}
	}
	value := ""
	if ch != nil {
		fn := strings.ToLower(strings.ReplaceAll(name, " ", ""))
		switch {
		case fn == "channel(recvip)" && ch.tech == ami.TechSIP:
			value = ch.remoteIP
		case fn == "channel(peerip)" && ch.tech == ami.TechSIP:
			value = ch.peerIP
		case fn == "channel(pjsip,remote_addr)" && ch.tech == ami.TechPJSIP && ch.remoteIP != "":
			value = ch.remoteIP + ":" + ch.remotePt
		case fn == "channel(name)":
			value = ch.name
		case fn == "uniqueid" || fn == "channel(uniqueid)":
			value = ch.uniqueid
		case fn == "channel(linkedid)":
			value = ch.linkedid
		}
	}
	q.c.enqueue(new(reply).h("Response", "Success").id(q.aid).h("Variable", name).h("Value", value).end().b, false)
	return true
}

// hangupCause parses a Cause header as Asterisk: 0-127, else the default.
func hangupCause(v string) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 || n > 127 {
		return 16
	}
	return n
}

// matchChannels resolves a Hangup Channel: a name or uniqueid, or /regex/.
// It answers errors itself and returns ok=false then.
func (s *Server) matchChannels(q *req, onlyTech ami.Tech) (targets []*channel, isRegex, ok bool) {
	spec := q.get("Channel")
	if spec == "" {
		q.c.enqueue(errorReply(q.aid, "No channel specified"), false)
		return nil, false, false
	}
	// Asterisk 1.8 looks every value up as a name or uniqueid.
	if len(spec) >= 2 && spec[0] == '/' && spec[len(spec)-1] == '/' && s.opts.Version != Asterisk1_8 {
		re, err := regexp.CompilePOSIX(spec[1 : len(spec)-1])
		if err != nil {
			q.c.enqueue(errorReply(q.aid, "Regex compile failed on: "+spec), false)
			return nil, true, false
		}
		for _, ch := range s.pbx.live() {
			if (onlyTech == ami.TechUnknown || ch.tech == onlyTech) && re.MatchString(ch.name) {
				targets = append(targets, ch)
			}
		}
		return targets, true, true
	}
	ch := s.pbx.find(spec)
	if ch == nil || onlyTech != ami.TechUnknown && ch.tech != onlyTech {
		q.c.enqueue(errorReply(q.aid, "No such channel"), false)
		return nil, false, false
	}
	return []*channel{ch}, false, true
}

// hangupReply answers a hangup: "Channel Hungup" for one channel, a list of
// ChannelHungup events for a regex (Asterisk 11 puts the ActionID of the
// complete event last).
func (s *Server) hangupReply(q *req, targets []*channel, isRegex bool) {
	if !isRegex {
		q.c.enqueue(ackReply(q.aid, "Channel Hungup"), false)
		return
	}
	r := listStart(q.aid, "Channels hung up will follow")
	for _, ch := range targets {
		r.h("Event", "ChannelHungup").h("Channel", ch.name).id(q.aid).end()
	}
	if s.opts.Version.legacy() {
		r.listComplete11("ChannelsHungupListComplete", q.aid, len(targets))
	} else {
		r.listComplete("ChannelsHungupListComplete", q.aid, len(targets))
	}
	q.c.enqueue(r.b, false)
}

func (s *Server) actHangup(q *req) bool {
	targets, isRegex, ok := s.matchChannels(q, ami.TechUnknown)
	if !ok {
		return true
	}
	s.hangupReply(q, targets, isRegex)
	s.hangup(targets, hangupCause(q.get("Cause")))
	return true
}

// actPJSIPHangup answers at once and hangs up a moment later, as Asterisk
// 22 did (the channel still showed in a regex Hangup right after).
func (s *Server) actPJSIPHangup(q *req) bool {
	targets, isRegex, ok := s.matchChannels(q, ami.TechPJSIP)
	if !ok {
		return true
	}
	s.hangupReply(q, targets, isRegex)
	cause := hangupCause(q.get("Cause"))
	s.after(pjsipHangupDelay, func() {
		var still []*channel
		for _, t := range targets {
			if s.pbx.chans[t.uniqueid] == t {
				still = append(still, t)
			}
		}
		s.hangup(still, cause)
	})
	return true
}

// actGetConfig lists a file's categories as Category-NNNNNN and
// Line-NNNNNN-NNNNNN (manager.c action_getconfig). Category and Filter
// (catfilter syntax) narrow it.
func (s *Server) actGetConfig(q *req) bool {
	fn := q.get("Filename")
	if fn == "" {
		q.c.enqueue(errorReply(q.aid, "Filename not specified"), false)
		return true
	}
	f := s.files[fn]
	if f == nil {
		q.c.enqueue(errorReply(q.aid, "Config file not found"), false)
		return true
	}
	want, filter := q.get("Category"), q.get("Filter")
	r := new(reply).h("Response", "Success").id(q.aid)
	n := 0
	for _, c := range f.cats {
		if want != "" && !strings.EqualFold(c.name, want) || !c.matches(filter) {
			continue
		}
		r.h(fmt.Sprintf("Category-%06d", n), c.name)
		for i, v := range c.vars() {
			r.h(fmt.Sprintf("Line-%06d-%06d", n, i), v.name+"="+v.value)
		}
		n++
	}
	if n == 0 {
		// Asterisk writes this line as is, without a colon.
		r.b = append(r.b, "No categories found\r\n"...)
	}
	q.c.enqueue(r.end().b, false)
	return true
}

// actUpdateConfig applies numbered steps to a file and saves it, answering
// as manager.c action_updateconfig; a Reload header then reloads.
func (s *Server) actUpdateConfig(q *req) bool {
	src, dst := q.get("SrcFilename"), q.get("DstFilename")
	if src == "" || dst == "" {
		q.c.enqueue(errorReply(q.aid, "Filename not specified"), false)
		return true
	}
	f := s.files[src]
	if f == nil {
		q.c.enqueue(errorReply(q.aid, "Config file not found"), false)
		return true
	}
	var steps []step
	for i := 0; i < 100000; i++ {
		n := fmt.Sprintf("%06d", i)
		action := q.get("Action-" + n)
		if action == "" {
			break
		}
		steps = append(steps, step{
			action: action, cat: q.get("Cat-" + n), varName: q.get("Var-" + n),
			hasVar: q.get("Var-"+n) != "", value: q.get("Value-" + n), match: q.get("Match-" + n),
			line: q.get("Line-" + n), options: q.get("Options-" + n),
		})
	}
	g := f.clone()
	if res := g.apply(steps); res != updOK {
		q.c.enqueue(errorReply(q.aid, string(res)), false)
		return true
	}
	g.name, g.saved, g.savedAt = dst, true, time.Now()
	s.files[dst] = g
	q.c.enqueue(ackReply(q.aid, ""), false)
	if rld := q.get("Reload"); rld != "" {
		if isTrue(rld) {
			s.reloadModule("", false)
		} else {
			s.reloadModule(rld, true)
		}
	}
	return true
}

// reloadModule reloads a module ("" = all): the loaded secrets follow the
// files. With event, a Reload event is broadcast as Asterisk does.
func (s *Server) reloadModule(mod string, event bool) bool {
	known := true
	switch strings.ToLower(mod) {
	case "":
		s.regenerate()
		s.pbx.reloadSIP(s.files["sip.conf"])
		s.pbx.reloadPJSIP(s.files["pjsip.conf"])
	case "chan_sip", "chan_sip.so":
		s.pbx.reloadSIP(s.files["sip.conf"])
	case "res_pjsip", "res_pjsip.so":
		known = !s.opts.Version.legacy()
		if known {
			s.pbx.reloadPJSIP(s.files["pjsip.conf"])
		}
	default:
		known = false
	}
	if s.opts.Version.legacy() {
		// chan_sip announces its own reloads; there is no Reload event.
		if known && !strings.HasPrefix(strings.ToLower(mod), "res_pjsip") {
			s.channelReload("RELOAD (Channel module reload)")
		}
		s.logf("amitest: reload %q (known %v)", mod, known)
		return known
	}
	if event && mod != "" {
		status := "0"
		if !known {
			status = "2" // AST_MODULE_RELOAD_NOT_FOUND
		}
		s.broadcast(new(reply).h("Event", "Reload").h("Privilege", "system,all").h("Module", mod).h("Status", status).end().b, classSystem, false)
	}
	s.logf("amitest: reload %q (known %v)", mod, known)
	return known
}

// actCommand runs the few CLI commands the guard may use; others answer
// as Asterisk does for an unknown command.
func (s *Server) actCommand(q *req) bool {
	if s.opts.Version.legacy() {
		return s.actCommand11(q)
	}
	cmd := strings.Join(strings.Fields(q.get("Command")), " ")
	out := func(resp string, lines ...string) {
		r := new(reply).h("Response", resp).id(q.aid).h("Message", "Command output follows")
		for _, l := range lines {
			r.h("Output", l)
		}
		q.c.enqueue(r.end().b, false)
	}
	lc := strings.ToLower(cmd)
	switch {
	case lc == "sip reload":
		out("Success", "")
		s.reloadModule("chan_sip", false)
	case strings.HasPrefix(lc, "module reload ") && len(strings.Fields(cmd)) == 3:
		mod := strings.Fields(cmd)[2]
		switch strings.ToLower(mod) {
		case "chan_sip", "chan_sip.so", "res_pjsip", "res_pjsip.so":
			out("Success", "Module '"+mod+"' reloaded successfully.")
			s.reloadModule(mod, true)
		default:
			out("Error", "No such module '"+mod+"'")
		}
	case lc == "core reload" || lc == "reload":
		out("Success", "")
		s.reloadModule("", false)
	default:
		out("Error", "No such command '"+cmd+"' (type 'core show help "+cmd+"' for other possible commands)")
	}
	return true
}

// actReload is the Reload action (Module: optional).
func (s *Server) actReload(q *req) bool {
	mod := q.get("Module")
	switch strings.ToLower(mod) {
	case "", "chan_sip", "chan_sip.so":
	case "res_pjsip", "res_pjsip.so":
		if s.opts.Version.legacy() {
			q.c.enqueue(errorReply(q.aid, "No such module"), false)
			return true
		}
	default:
		q.c.enqueue(errorReply(q.aid, "No such module"), false)
		return true
	}
	q.c.enqueue(ackReply(q.aid, "Module Reloaded"), false)
	s.reloadModule(mod, mod != "")
	return true
}
