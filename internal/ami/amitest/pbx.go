package amitest

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// snapshotKeys is the channel snapshot of Newchannel, Hangup, CoreShowChannel
// and friends, in Asterisk's order.
var snapshotKeys = []string{
	"Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
	"ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Context",
	"Exten", "Priority", "Uniqueid", "Linkedid",
}

// bridgeKeys are the bridge fields of Bridge* events, in Asterisk's order
// (BridgeNumChannels, computed, goes before BridgeVideoSourceMode).
var bridgeKeys = []string{"BridgeType", "BridgeTechnology", "BridgeCreator", "BridgeName", "BridgeVideoSourceMode"}

type channel struct {
	order    int
	name     string
	uniqueid string
	linkedid string
	tech     ami.Tech
	owner    string // peer or endpoint
	snap     map[string]string
	app      string
	appData  string
	bridge   string
	created  time.Time
	remoteIP string // where the call came from, as Asterisk saw it (recvip)
	remotePt string
	peerIP   string // the peer's address, where Asterisk sends to (chan_sip peerip)

	// Asterisk 1.8/11, which have no Linkedid and no bridge objects: the
	// channel this one is bridged to (Bridge Link), whether it was
	// Channel1 of that Bridge event, and whether it dialled (Dial Begin).
	bridgedTo   string
	bridgeFirst bool
	dialled     bool
}

type bridge struct {
	fields  map[string]string
	members map[string]bool // uniqueids
}

// secInfo is what a security event said about a request.
type secInfo struct {
	sessionID, local, remote, challenge string
	at                                  time.Time
}

type sipPeer struct {
	ip    string
	port  string
	regAt time.Time
}

type contact struct {
	endpoint string
	ip, port string
	callID   string
	at       time.Time
}

// pbx is the fake's model of the PBX. Guarded by Server.mu.
type pbx struct {
	chans   map[string]*channel // by uniqueid
	nextOrd int
	bridges map[string]*bridge
	peers   map[string]*sipPeer // chan_sip peers by name, from PeerStatus
	// lastChallenge is the last SIP ChallengeSent per peer (AccountID
	// sip:<peer>@host): the address and session of its next INVITE.
	lastChallenge map[string]secInfo
	lastPJAuth    map[string]secInfo  // last PJSIP SuccessfulAuth per AccountID
	contacts      map[string]*contact // PJSIP contacts by endpoint

	deadUniq     map[string]bool // channels whose later events are dropped
	deadLinked   map[string]bool // calls whose later events are dropped
	bridgeLinked map[string]string
	// dialLinked maps a 1.8/11 leg to the channel that dialled it (the
	// Dial Begin comes after the leg's Newchannel, and there is no
	// Linkedid): a refused call drops its leg's events too.
	dialLinked map[string]string

	// Secrets in effect (as last reloaded) and at start: an extension whose
	// secret changed and was reloaded can no longer place calls.
	origSIP, loadedSIP map[string]string // peer -> secret
	origPJ, loadedPJ   map[string]string // endpoint -> password of its auth
	pjAccount          map[string]string // auth username -> endpoint (as loaded)
	pendingCRF         map[string]bool   // endpoint: a failed auth awaits its call
	// sipTrunks are the chan_sip peers without a secret, matched by their
	// static host (as loaded).
	sipTrunks map[string]hostPort
	// livePJ and liveSIP, when set (Options.Realtime), give the
	// credentials in use now, read from the realtime tables, in place of
	// loadedPJ and loadedSIP.
	livePJ, liveSIP func(name string) (string, bool)

	clock time.Time // recorded time of the last streamed message
}

func newPBX(script []scriptMsg, files map[string]*confFile) *pbx {
	p := &pbx{
		chans:         map[string]*channel{},
		bridges:       map[string]*bridge{},
		peers:         map[string]*sipPeer{},
		lastChallenge: map[string]secInfo{},
		lastPJAuth:    map[string]secInfo{},
		contacts:      map[string]*contact{},
		deadUniq:      map[string]bool{},
		deadLinked:    map[string]bool{},
		bridgeLinked:  map[string]string{},
		dialLinked:    map[string]string{},
		pendingCRF:    map[string]bool{},
	}
	// Bridges are created before the channels enter them: know in advance
	// which call each bridge belongs to, so a dropped call drops its bridge.
	for i := range script {
		m := &script[i]
		switch {
		case m.event == "bridgeenter":
			b := m.get("BridgeUniqueid")
			if _, ok := p.bridgeLinked[b]; !ok {
				p.bridgeLinked[b] = m.get("Linkedid")
			}
		case m.event == "dial" && strings.EqualFold(m.get("SubEvent"), "Begin"):
			p.dialLinked[m.get("DestUniqueID")] = m.get("UniqueID")
		}
	}
	p.origSIP = sipSecrets(files["sip.conf"])
	p.loadedSIP = p.origSIP
	p.sipTrunks = sipTrunks(files["sip.conf"])
	p.origPJ, p.pjAccount = pjsipPasswords(files["pjsip.conf"])
	p.loadedPJ = p.origPJ
	return p
}

// sipSecrets returns each chan_sip peer's credentials in sip.conf.
func sipSecrets(f *confFile) map[string]string {
	out := map[string]string{}
	if f == nil {
		return out
	}
	for _, c := range f.cats {
		if strings.EqualFold(c.name, "general") {
			continue
		}
		out[c.name] = c.get("secret") + "\x00" + c.get("md5secret")
	}
	return out
}

type hostPort struct{ ip, port string }

// sipTrunks returns the chan_sip peers that take no password and have a
// static host (the lab's carrier): chan_sip matches their requests by that
// address.
func sipTrunks(f *confFile) map[string]hostPort {
	out := map[string]hostPort{}
	if f == nil {
		return out
	}
	for _, c := range f.cats {
		host := c.get("host")
		if strings.EqualFold(c.name, "general") || host == "" || strings.EqualFold(host, "dynamic") ||
			c.get("secret") != "" || c.get("md5secret") != "" {
			continue
		}
		port := c.get("port")
		if port == "" {
			port = "5060"
		}
		out[c.name] = hostPort{host, port}
	}
	return out
}

// pjsipPasswords returns each PJSIP endpoint's credentials (from the auth
// section its auth= names) and the endpoint of each auth username.
func pjsipPasswords(f *confFile) (map[string]string, map[string]string) {
	pw, acct := map[string]string{}, map[string]string{}
	if f == nil {
		return pw, acct
	}
	for _, ep := range f.cats {
		if !strings.EqualFold(ep.get("type"), "endpoint") || ep.get("auth") == "" {
			continue
		}
		auth := f.find(ep.get("auth"), "type=auth")
		if auth == nil {
			continue
		}
		pw[ep.name] = auth.get("password") + "\x00" + auth.get("password_digest") + "\x00" + auth.get("md5_cred")
		user := auth.get("username")
		if user == "" {
			user = ep.name
		}
		acct[user] = ep.name
	}
	return pw, acct
}

// reloadSIP and reloadPJSIP make the current files the loaded config.
func (p *pbx) reloadSIP(f *confFile)   { p.loadedSIP, p.sipTrunks = sipSecrets(f), sipTrunks(f) }
func (p *pbx) reloadPJSIP(f *confFile) { p.loadedPJ, p.pjAccount = pjsipPasswords(f) }

func (p *pbx) sipRotated(peer string) bool {
	o, ok := p.origSIP[peer]
	if ok && p.liveSIP != nil {
		now, found := p.liveSIP(peer)
		return !found || now != o
	}
	return ok && p.loadedSIP[peer] != o
}

func (p *pbx) pjRotated(endpoint string) bool {
	o, ok := p.origPJ[endpoint]
	if ok && p.livePJ != nil {
		now, found := p.livePJ(endpoint)
		return !found || now != o
	}
	return ok && p.loadedPJ[endpoint] != o
}

// live returns the live channels in order of creation.
func (p *pbx) live() []*channel {
	out := make([]*channel, 0, len(p.chans))
	for _, ch := range p.chans {
		out = append(out, ch)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].order < out[j].order })
	return out
}

// find returns the live channel with this name or uniqueid.
func (p *pbx) find(nameOrID string) *channel {
	if ch := p.chans[nameOrID]; ch != nil {
		return ch
	}
	for _, ch := range p.chans {
		if ch.name == nameOrID {
			return ch
		}
	}
	return nil
}

// now is the fake's clock: the recorded time of the last streamed message,
// or the wall clock when nothing was streamed.
func (p *pbx) now() time.Time {
	if p.clock.IsZero() {
		return time.Now()
	}
	return p.clock
}

// dead reports whether a message belongs to a channel or call that the fake
// hung up or refused.
func (p *pbx) dead(m *scriptMsg) bool {
	if len(p.deadUniq) == 0 && len(p.deadLinked) == 0 {
		return false
	}
	if u := m.get("Uniqueid"); u != "" && p.deadUniq[u] {
		return true
	} else if caller, ok := p.dialLinked[u]; ok && p.deadUniq[caller] {
		p.deadUniq[u] = true
		return true
	}
	if l := m.get("Linkedid"); l != "" && p.deadLinked[l] {
		if m.event == "newchannel" {
			p.deadUniq[m.get("Uniqueid")] = true
		}
		return true
	}
	for _, k := range []string{"DestUniqueid", "Uniqueid1", "Uniqueid2"} { // Uniqueid1/2: 1.8/11 Bridge
		if u := m.get(k); u != "" && p.deadUniq[u] {
			return true
		}
	}
	if b := m.get("BridgeUniqueid"); b != "" {
		if l, ok := p.bridgeLinked[b]; ok && p.deadLinked[l] {
			return true
		}
	}
	return false
}

// kill marks a channel's call dead: its later events are not streamed.
func (p *pbx) kill(uniqueid, linkedid string) {
	p.deadUniq[uniqueid] = true
	if linkedid != "" {
		p.deadLinked[linkedid] = true
	}
}

// splitRemote splits "IPV4/UDP/127.0.0.2/5071" into address and port.
func splitRemote(v string) (string, string) {
	parts := strings.Split(v, "/")
	if len(parts) < 2 {
		return "", ""
	}
	return parts[len(parts)-2], parts[len(parts)-1]
}

// splitHostPort splits "127.0.0.2:5070" (or an address without port).
func splitHostPort(v string) (string, string) {
	if i := strings.LastIndexByte(v, ':'); i >= 0 && strings.Count(v, ":") == 1 {
		return v[:i], v[i+1:]
	}
	return v, ""
}

// sipAccountPeer returns the peer of a ChallengeSent AccountID
// "sip:200@127.0.0.1", or the AccountID itself when it is a bare name.
func sipAccountPeer(acct string) string {
	a := strings.TrimPrefix(strings.TrimPrefix(acct, "sips:"), "sip:")
	if i := strings.IndexByte(a, '@'); i >= 0 {
		a = a[:i]
	}
	return a
}

// track applies a streamed (or injected) message to the model.
func (p *pbx) track(m *scriptMsg) {
	switch m.event {
	case "newchannel":
		u := m.get("Uniqueid")
		if u == "" {
			return
		}
		p.nextOrd++
		ch := &channel{
			order:    p.nextOrd,
			name:     m.get("Channel"),
			uniqueid: u,
			linkedid: m.get("Linkedid"),
			snap:     map[string]string{},
			created:  m.at,
		}
		if ch.created.IsZero() {
			ch.created = p.now()
		}
		if ch.linkedid == "" {
			ch.linkedid = u
		}
		if cn, ok := ami.ParseChannel(ch.name); ok {
			ch.tech, ch.owner = cn.Tech, cn.Name
		}
		for _, k := range snapshotKeys {
			ch.snap[k] = m.get(k)
		}
		p.setRemote(ch)
		p.chans[u] = ch
		return
	case "hangup":
		if ch := p.chans[m.get("Uniqueid")]; ch != nil {
			p.leaveBridge(ch)
			p.unlink(ch)
			delete(p.chans, ch.uniqueid)
		}
		return
	case "bridge": // 1.8/11: Bridgestate Link or Unlink of Channel1 and Channel2
		c1, c2 := p.chans[m.get("Uniqueid1")], p.chans[m.get("Uniqueid2")]
		if c1 == nil || c2 == nil {
			return
		}
		if strings.EqualFold(m.get("Bridgestate"), "Link") {
			c1.bridgedTo, c1.bridgeFirst = c2.uniqueid, true
			c2.bridgedTo, c2.bridgeFirst = c1.uniqueid, false
		} else {
			p.unlink(c1)
		}
		return
	case "dial": // 1.8/11: the caller's Dial Begin names the leg it created
		if !strings.EqualFold(m.get("SubEvent"), "Begin") {
			break
		}
		src, dst := p.chans[m.get("UniqueID")], p.chans[m.get("DestUniqueID")]
		if src != nil && dst != nil {
			src.dialled = true
			dst.linkedid = src.linkedid // what Linkedid would have said
			dst.app, dst.appData = "AppDial", "(Outgoing Line)"
		}
	case "bridgecreate", "bridgeenter", "bridgeleave", "bridgedestroy":
		p.trackBridge(m)
	case "peerstatus":
		peer := m.get("Peer")
		if i := strings.IndexByte(peer, '/'); i >= 0 {
			peer = peer[i+1:]
		}
		switch strings.ToLower(m.get("PeerStatus")) {
		case "registered", "reachable", "lagged":
			ip, port := splitHostPort(m.get("Address"))
			if ip == "" {
				break
			}
			st := p.peers[peer]
			if st == nil {
				st = &sipPeer{}
				p.peers[peer] = st
			}
			st.ip, st.port = ip, port
			if strings.EqualFold(m.get("PeerStatus"), "registered") {
				st.regAt = m.at
				if st.regAt.IsZero() {
					st.regAt = p.now()
				}
			}
		case "unregistered":
			delete(p.peers, peer)
		}
		return
	case "challengesent":
		if strings.EqualFold(m.get("Service"), "SIP") {
			p.lastChallenge[sipAccountPeer(m.get("AccountID"))] = secOf(m)
		}
		return
	case "successfulauth":
		if strings.EqualFold(m.get("Service"), "PJSIP") {
			acct := m.get("AccountID")
			si := secOf(m)
			p.lastPJAuth[acct] = si
			ep := p.pjAccount[acct]
			if ep == "" {
				ep = acct
			}
			if p.contacts[ep] == nil {
				ip, port := splitRemote(si.remote)
				p.contacts[ep] = &contact{endpoint: ep, ip: ip, port: port, callID: si.sessionID, at: si.at}
			}
		}
		return
	}
	// Any other event about a live channel refreshes its snapshot.
	ch := p.chans[m.get("Uniqueid")]
	if ch == nil || m.get("Channel") != ch.name {
		return
	}
	for _, h := range m.hdrs {
		for _, k := range snapshotKeys {
			if strings.EqualFold(h[0], k) && k != "Channel" && k != "Uniqueid" {
				ch.snap[k] = h[1]
			}
		}
	}
	if m.event == "newexten" {
		ch.app, ch.appData = m.get("Application"), m.get("AppData")
		if m.has("Extension") && !m.has("Exten") { // 1.8/11 spell it Extension
			ch.snap["Exten"] = m.get("Extension")
		}
	}
}

// unlink ends a 1.8/11 bridge of ch.
func (p *pbx) unlink(ch *channel) {
	if o := p.chans[ch.bridgedTo]; o != nil && o.bridgedTo == ch.uniqueid {
		o.bridgedTo = ""
	}
	ch.bridgedTo = ""
}

func secOf(m *scriptMsg) secInfo {
	at := m.at
	if at.IsZero() {
		at = time.Now()
	}
	return secInfo{
		sessionID: m.get("SessionID"), local: m.get("LocalAddress"), remote: m.get("RemoteAddress"),
		challenge: m.get("Challenge"), at: at,
	}
}

// setRemote records where a new channel's call came from, as chan_sip's
// recvip and PJSIP's remote_addr give it, and for chan_sip the peer's
// address (peerip).
//
// chan_sip: a peer without a secret and with a static host (a trunk) is
// matched by that address and never challenged, so its calls come from its
// host; a ChallengeSent naming it came from whoever put its name in the From
// header (alwaysauthreject challenges anyone) and made no channel. Any other
// peer's INVITE was challenged and answered from the address of the last
// challenge naming it; else its registration. peerip is where Asterisk
// sends to: the registration's address (the Contact header's with nat=no),
// else the host, else recvip. PJSIP: the endpoint's last successful
// authentication.
func (p *pbx) setRemote(ch *channel) {
	switch ch.tech {
	case ami.TechSIP:
		trunk, isTrunk := p.sipTrunks[ch.owner]
		si, challenged := p.lastChallenge[ch.owner]
		reg := p.peers[ch.owner]
		switch {
		case isTrunk:
			ch.remoteIP, ch.remotePt = trunk.ip, trunk.port
		case challenged && si.remote != "":
			ch.remoteIP, ch.remotePt = splitRemote(si.remote)
		case reg != nil:
			ch.remoteIP, ch.remotePt = reg.ip, reg.port
		}
		ch.peerIP = ch.remoteIP
		if reg != nil {
			ch.peerIP = reg.ip
		} else if isTrunk {
			ch.peerIP = trunk.ip
		}
	case ami.TechPJSIP:
		acct := ch.owner
		for user, ep := range p.pjAccount {
			if ep == ch.owner {
				acct = user
			}
		}
		if si, ok := p.lastPJAuth[acct]; ok {
			ch.remoteIP, ch.remotePt = splitRemote(si.remote)
		}
	}
}

func (p *pbx) trackBridge(m *scriptMsg) {
	id := m.get("BridgeUniqueid")
	if id == "" {
		return
	}
	if m.event == "bridgedestroy" {
		delete(p.bridges, id)
		return
	}
	b := p.bridges[id]
	if b == nil {
		b = &bridge{fields: map[string]string{}, members: map[string]bool{}}
		p.bridges[id] = b
	}
	for _, k := range bridgeKeys {
		if v := m.get(k); v != "" || b.fields[k] == "" {
			b.fields[k] = v
		}
	}
	u := m.get("Uniqueid")
	ch := p.chans[u]
	switch m.event {
	case "bridgeenter":
		b.members[u] = true
		if ch != nil {
			ch.bridge = id
		}
	case "bridgeleave":
		delete(b.members, u)
		if ch != nil && ch.bridge == id {
			ch.bridge = ""
		}
	}
}

// leaveBridge takes a channel out of its bridge.
func (p *pbx) leaveBridge(ch *channel) {
	if b := p.bridges[ch.bridge]; b != nil {
		delete(b.members, ch.uniqueid)
	}
	ch.bridge = ""
}

// streamOne streams one transcript message: dropped if its call is dead,
// rewritten if its extension's secret was rotated, else sent as recorded.
// Callers hold s.mu.
func (s *Server) streamOne(m *scriptMsg) {
	p := s.pbx
	if !m.at.IsZero() {
		p.clock = m.at
	}
	if p.dead(m) {
		return
	}
	switch m.event {
	case "newchannel":
		cn, ok := ami.ParseChannel(m.get("Channel"))
		if !ok {
			break
		}
		switch {
		case cn.Tech == ami.TechSIP && p.sipRotated(cn.Name):
			p.kill(m.get("Uniqueid"), m.get("Linkedid"))
			si := p.lastChallenge[cn.Name]
			s.broadcast(s.invalidPasswordFrame(m, cn.Name, m.get("Exten"), si), classSecurity, false)
			return
		case cn.Tech == ami.TechPJSIP && p.pjRotated(cn.Name):
			p.kill(m.get("Uniqueid"), m.get("Linkedid"))
			if !p.pendingCRF[cn.Name] {
				acct := cn.Name
				for user, ep := range p.pjAccount {
					if ep == cn.Name {
						acct = user
					}
				}
				s.broadcast(challengeFailedFrame(m, acct, p.lastPJAuth[acct]), classSecurity, false)
			}
			delete(p.pendingCRF, cn.Name)
			return
		}
	case "failedacl":
		// A rotated peer's INVITE now fails authentication before the
		// dialplan is consulted.
		if strings.EqualFold(m.get("Service"), "SIP") {
			sid := m.get("SessionID")
			for peer, si := range p.lastChallenge {
				if si.sessionID == sid && p.sipRotated(peer) {
					s.broadcast(s.invalidPasswordFrame(m, peer, m.get("AccountID"), si), classSecurity, false)
					return
				}
			}
		}
	case "successfulauth":
		acct := m.get("AccountID")
		switch strings.ToUpper(m.get("Service")) {
		case "SIP":
			if p.sipRotated(acct) {
				// A REGISTER with the old secret.
				s.broadcast(s.invalidPasswordFrame(m, acct, acct, secOf(m)), classSecurity, false)
				return
			}
		case "PJSIP":
			ep := p.pjAccount[acct]
			if ep == "" {
				ep = acct
			}
			if p.pjRotated(ep) {
				p.pendingCRF[ep] = true
				s.broadcast(challengeFailedFrame(m, acct, secOf(m)), classSecurity, false)
				return
			}
		}
	}
	p.track(m)
	s.broadcast(m.raw, m.classes, false)
}

// fakeHex returns n hex digits derived from the parts (stable per input).
func fakeHex(n int, parts ...string) string {
	sum := md5.Sum([]byte(strings.Join(parts, "\x00")))
	h := hex.EncodeToString(sum[:])
	for len(h) < n {
		h += h
	}
	return h[:n]
}

// invalidPasswordFrame is chan_sip's InvalidPassword for a request of peer
// that no longer authenticates, as after-rotation.ami shows it: AccountID is
// the dialled number for an INVITE (the peer for a REGISTER), the session,
// addresses and challenge are those of the request's ChallengeSent.
func (s *Server) invalidPasswordFrame(m *scriptMsg, peer, account string, si secInfo) []byte {
	at := m.at
	if at.IsZero() {
		at = time.Now()
	}
	if si.remote == "" {
		if st := s.pbx.peers[peer]; st != nil {
			si.remote = "IPV4/UDP/" + st.ip + "/" + st.port
		}
	}
	if si.local == "" {
		si.local = "IPV4/UDP/127.0.0.1/5060"
	}
	if si.sessionID == "" {
		si.sessionID = "0x7fa2b4" + fakeHex(6, "session", peer, account, strconv.Itoa(m.seq))
	}
	if si.challenge == "" {
		si.challenge = fakeHex(8, "challenge", peer, strconv.Itoa(m.seq))
	}
	return new(reply).h("Event", "InvalidPassword").h("Privilege", "security,all").
		h("EventTV", eventTV(at)).h("Severity", "Error").h("Service", "SIP").h("EventVersion", "2").
		h("AccountID", account).h("SessionID", si.sessionID).h("LocalAddress", si.local).
		h("RemoteAddress", si.remote).h("Challenge", si.challenge).h("ReceivedChallenge", si.challenge).
		h("ReceivedHash", fakeHex(32, "hash", peer, account, strconv.Itoa(m.seq))).end().b
}

// challengeFailedFrame is res_pjsip's ChallengeResponseFailed for a request
// with a wrong password, as pjsip-bruteforce.ami shows it.
func challengeFailedFrame(m *scriptMsg, account string, si secInfo) []byte {
	at := m.at
	if at.IsZero() {
		at = time.Now()
	}
	if si.local == "" {
		si.local = "IPV4/UDP/127.0.0.1/5062"
	}
	if si.sessionID == "" {
		si.sessionID = fmt.Sprintf("%d-%s", m.seq, fakeHex(5, "callid", account))
	}
	return new(reply).h("Event", "ChallengeResponseFailed").h("Privilege", "security,all").
		h("EventTV", eventTV(at)).h("Severity", "Error").h("Service", "PJSIP").h("EventVersion", "1").
		h("AccountID", account).h("SessionID", si.sessionID).h("LocalAddress", si.local).
		h("RemoteAddress", si.remote).
		h("Challenge", strconv.FormatInt(at.Unix(), 10)+"/"+fakeHex(32, "nonce", account, strconv.Itoa(m.seq))).
		h("Response", fakeHex(32, "response", account, strconv.Itoa(m.seq))).
		h("ExpectedResponse", "").end().b
}

// causeText is Asterisk's Cause-txt for the common Q.850 causes.
var causeText = map[int]string{
	1: "Unallocated (unassigned) number", 2: "No route to specified transmit network",
	3: "No route to destination", 6: "Channel unacceptable", 16: "Normal Clearing",
	17: "User busy", 18: "No user responding", 19: "User alerting, no answer",
	20: "Subscriber absent", 21: "Call Rejected", 22: "Number changed",
	27: "Destination out of order", 28: "Invalid number format", 29: "Facility rejected",
	31: "Normal, unspecified", 34: "Circuit/channel congestion", 38: "Network out of order",
	41: "Temporary failure", 42: "Switching equipment congestion",
	127: "Interworking, unspecified",
}

func causeTxt(c int) string {
	if t, ok := causeText[c]; ok {
		return t
	}
	return "Unknown"
}

// pjsipTechCause is the SIP code chan_pjsip reports as TechCause for a
// Q.850 cause (observed: 21 -> 403); 0 for none.
func pjsipTechCause(c int) int {
	switch c {
	case 1, 2, 3:
		return 404
	case 17:
		return 486
	case 18:
		return 408
	case 19, 20:
		return 480
	case 21:
		return 403
	case 22:
		return 410
	case 27:
		return 502
	case 28:
		return 484
	case 34, 38, 41, 42:
		return 503
	}
	return 0
}

// snapshot appends a channel's snapshot headers.
func (r *reply) snapshot(ch *channel) *reply {
	for _, k := range snapshotKeys {
		v := ch.snap[k]
		switch k {
		case "Channel":
			v = ch.name
		case "Uniqueid":
			v = ch.uniqueid
		case "Linkedid":
			v = ch.linkedid
		}
		r.h(k, v)
	}
	return r
}

// bridgeHeaders appends a bridge's headers with its current channel count.
func (r *reply) bridgeHeaders(id string, b *bridge) *reply {
	r.h("BridgeUniqueid", id)
	for _, k := range bridgeKeys {
		if k == "BridgeVideoSourceMode" {
			r.h("BridgeNumChannels", strconv.Itoa(len(b.members)))
		}
		r.h(k, b.fields[k])
	}
	return r
}

// hangup hangs up channels as an AMI hangup does, and broadcasts what
// Asterisk emitted (hangup-events.ami, actions-dialog.txt): per channel a
// BridgeLeave, SoftHangupRequest (Cause 16, always), the other legs of the
// call leaving the bridge, BridgeDestroy, then Hangup with the asked cause
// (PJSIP adds TechCause) and Hangup of the other legs with cause 16. The
// transcript's later events of those calls are dropped. Callers hold s.mu.
func (s *Server) hangup(targets []*channel, cause int) {
	if s.opts.Version.legacy() {
		s.hangup11(targets, cause)
		return
	}
	p := s.pbx
	isTarget := map[string]bool{}
	for _, t := range targets {
		isTarget[t.uniqueid] = true
	}
	var out reply
	for _, t := range targets {
		if p.chans[t.uniqueid] == nil {
			continue // already gone with an earlier one
		}
		var legs []*channel
		for _, ch := range p.live() {
			if ch != t && !isTarget[ch.uniqueid] && ch.linkedid == t.linkedid {
				legs = append(legs, ch)
			}
		}
		var bridges []string
		leave := func(ch *channel) {
			if b := p.bridges[ch.bridge]; b != nil {
				id := ch.bridge
				p.leaveBridge(ch)
				out.h("Event", "BridgeLeave").h("Privilege", "call,all").bridgeHeaders(id, b).snapshot(ch).end()
				if !slices.Contains(bridges, id) {
					bridges = append(bridges, id)
				}
			}
		}
		leave(t)
		out.h("Event", "SoftHangupRequest").h("Privilege", "call,all").snapshot(t).h("Cause", "16").end()
		for _, l := range legs {
			leave(l)
		}
		for _, id := range bridges {
			if b := p.bridges[id]; b != nil && len(b.members) == 0 {
				out.h("Event", "BridgeDestroy").h("Privilege", "call,all").bridgeHeaders(id, b).end()
				delete(p.bridges, id)
			}
		}
		hangupEvent(&out, t, cause)
		for _, l := range legs {
			hangupEvent(&out, l, 16)
		}
		for _, ch := range append([]*channel{t}, legs...) {
			delete(p.chans, ch.uniqueid)
			p.kill(ch.uniqueid, ch.linkedid)
		}
		s.logf("amitest: hung up %s (cause %d) and %d other legs", t.name, cause, len(legs))
	}
	s.broadcast(out.b, classCall, false)
}

func hangupEvent(out *reply, ch *channel, cause int) {
	out.h("Event", "Hangup").h("Privilege", "call,all").snapshot(ch).
		h("Cause", strconv.Itoa(cause)).h("Cause-txt", causeTxt(cause))
	if ch.tech == ami.TechPJSIP {
		if tc := pjsipTechCause(cause); tc != 0 {
			out.h("TechCause", strconv.Itoa(tc))
		}
	}
	out.end()
}
