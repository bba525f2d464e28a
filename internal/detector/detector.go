// Package detector keeps sliding windows of calls and security events per
// extension and per source address, driven by event time, and says what it
// saw as Alerts. It decides nothing about what to do: that is the policy's job.
//
// A Detector is not safe for concurrent use: one goroutine feeds it events.
package detector

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

const (
	maxSourcesPerExt  = 8   // addresses Asterisk received an extension's requests from
	maxContactsPerExt = 4   // client-supplied contact addresses remembered per extension
	maxCallsPerExt    = 512 // live calls tracked per extension (more are counted, not named)
	maxDestsPerExt    = 16  // destinations tracked for prefix guessing
	maxSample         = 8   // dialled numbers / accounts kept for an alert
	sessionDedupe     = 2 * time.Second
	maxCallIndex      = 1 << 17 // live originated calls indexed by Uniqueid
	evictScan         = 64      // stalest keys examined to find an idle one
	sweepEvery        = time.Second
	dialledAccountLen = 7 // a chan_sip AccountID this long and all digits is a dialled number
)

// Stats counts what the detector did.
type Stats struct {
	Events     uint64 // events processed
	Alerts     uint64 // alerts raised
	Extensions int    // extensions tracked now
	Addresses  int    // addresses tracked now
	Evicted    uint64 // keys evicted because a cap was reached
	Expired    uint64 // keys dropped after idle_expiry
	Untracked  uint64 // new keys not tracked: the cap was full of incidents in progress
	Forged     uint64 // events not processed: they repeat a header (ami.Event.Forged)
}

type liveCall struct {
	uniqueid string
	channel  string
	number   string // empty until known (Originate: from the DialBegin)
}

// seenAddr is an address of an extension and when it was last seen.
type seenAddr struct {
	addr netip.Addr
	seen int64
}

// alertLog remembers the last alert of each rule and severity for
// cool-down, in seconds since the detector's first event plus one (0:
// never); 4 bytes an entry keeps a key's state small.
type alertLog [numRules - 1][2]uint32

type extState struct {
	link[extState]
	key      ami.Extension
	lastSeen int64
	incident int64 // an incident is in progress until this time
	alerts   alertLog
	// authed: proven to hold a secret, by a SuccessfulAuth with
	// UsingPassword: 1 or a registration Asterisk accepted (PeerStatus
	// Registered). Trunks and peers matched by their address never are. A
	// ChallengeSent proves nothing: chan_sip names an INVITE's sender by
	// its From user, which any caller chooses, and challenges it even when
	// no such peer takes a password (alwaysauthreject).
	authed bool

	calls []liveCall
	// sources: where Asterisk received the extension's requests from
	// (SuccessfulAuth's RemoteAddress); contacts: addresses the client
	// gave (PeerStatus Address, which chan_sip takes from the Contact
	// header unless nat= says otherwise; ContactStatus URI). Kept apart so
	// that contacts, which an attacker chooses, never push out a source.
	sources  []seenAddr
	contacts []seenAddr
	act      *extActivity // nil until the extension places a call
}

// extActivity is the state of an extension that places calls; most
// extensions of a large PBX are idle and never need it, and it is released
// once every window it feeds has passed (a registered phone is never idle,
// so its calls' windows must not stay for good).
type extActivity struct {
	link[extActivity]
	owner          *extState
	last           int64 // time of the last call
	burst, rate    ring
	intl, highRisk ring
	probes         ring
	prefixes       prefixWindow
	numbers        sample
}

func (e *extState) lk() *link[extState] { return &e.link }

func (a *extActivity) lk() *link[extActivity] { return &a.link }

// activity returns e's call state, creating it, and marks it used now.
func (d *Detector) activity(e *extState) *extActivity {
	if e.act == nil {
		e.act = &extActivity{owner: e}
		d.actQ.pushFront(e.act)
	} else {
		d.actQ.touch(e.act)
	}
	e.act.last = d.now
	return e.act
}

func (e *extState) numberList() []string {
	if e.act == nil {
		return nil
	}
	return e.act.numbers.list()
}

type addrState struct {
	link[addrState]
	addr     netip.Addr
	lastSeen int64
	incident int64
	alerts   [2][2]uint32 // auth_failures, failed_probes: as alertLog

	auth   ring
	probes ring
	// the last PJSIP request that failed (Call-ID and time), to count
	// the several events of one request once
	session   string
	sessionAt int64
	// firstAccount holds the first account tried; accounts is allocated
	// only when a second one comes (a flood of one-off addresses then
	// costs no sample each)
	firstAccount string
	accounts     *sample
	numbers      *sample // nil until a number is dialled
}

func addSample(p **sample, v string) {
	if *p == nil {
		*p = &sample{}
	}
	(*p).add(v)
}

func (a *addrState) accountList() []string {
	if a.accounts == nil && a.firstAccount != "" {
		return []string{a.firstAccount}
	}
	return a.accounts.list()
}

func (a *addrState) lk() *link[addrState] { return &a.link }

// sample keeps the newest distinct strings, at most maxSample, oldest
// first, packed in one array without pointers: each string after its
// length (a uvarint).
type sample struct {
	b []byte
	n int
}

func (s *sample) add(v string) {
	if v == "" || s.has(v) {
		return
	}
	if s.n == maxSample {
		l, w := binary.Uvarint(s.b)
		s.b = keepTail(s.b, w+int(l))
		s.n--
	}
	s.b = binary.AppendUvarint(s.b, uint64(len(v)))
	s.b = append(s.b, v...)
	s.n++
}

// nextEntry returns the entry at the start of b and what follows it.
func nextEntry(b []byte) (entry, rest []byte) {
	l, w := binary.Uvarint(b)
	return b[w : w+int(l)], b[w+int(l):]
}

func (s *sample) has(v string) bool {
	for b := s.b; len(b) > 0; {
		var e []byte
		e, b = nextEntry(b)
		if string(e) == v {
			return true
		}
	}
	return false
}

// list returns a copy, oldest first.
func (s *sample) list() []string {
	if s == nil || s.n == 0 {
		return nil
	}
	out := make([]string, 0, s.n)
	for b := s.b; len(b) > 0; {
		var e []byte
		e, b = nextEntry(b)
		out = append(out, string(e))
	}
	return out
}

// Detector is the sliding-window state of all extensions and addresses.
type Detector struct {
	cfg   Config
	plan  plan
	exts  map[ami.Extension]*extState
	addrs map[[16]byte]*addrState // by netip.Addr.As16: a key without pointers
	extQ  lru[extState, *extState]
	actQ  lru[extActivity, *extActivity] // extensions with call state, by last call
	addrQ lru[addrState, *addrState]
	calls map[string]*extState // live originated calls by Uniqueid

	allowExt  map[ami.Extension]bool
	allowName map[string]bool

	now           int64
	base          int64         // the first event's time, for alertLog
	longestWindow time.Duration // of the rules that keep call state
	// the largest size each map reached since it was last rebuilt
	extPeak, addrPeak, callsPeak int
	lastSweep                    int64
	stats                        Stats

	// per-event scratch
	ev  *ami.Event
	out []Alert
}

// New returns a detector with the given configuration. The configuration is
// assumed valid (the config package validates it).
func New(cfg Config) *Detector {
	d := &Detector{
		longestWindow: max(cfg.CallRateBurst.Window, cfg.CallRate.Window, cfg.PrefixGuess.Window,
			cfg.International.Window, cfg.HighRisk.Window, cfg.FailedProbes.Window),
		cfg:       cfg,
		plan:      newPlan(&cfg),
		exts:      make(map[ami.Extension]*extState),
		addrs:     make(map[[16]byte]*addrState),
		calls:     make(map[string]*extState),
		allowExt:  make(map[ami.Extension]bool),
		allowName: make(map[string]bool),
	}
	for _, a := range cfg.AllowExtensions {
		if tech, name, ok := strings.Cut(a, "/"); ok {
			if t, ok := ami.ParseTech(tech); ok {
				d.allowExt[ami.Extension{Tech: t, Name: name}] = true
				continue
			}
		}
		d.allowName[a] = true
	}
	return d
}

// SetConfig changes the thresholds and allow-lists (a config reload),
// keeping every window, live call and learned address.
func (d *Detector) SetConfig(cfg Config) {
	fresh := New(cfg)
	d.cfg, d.plan, d.allowExt, d.allowName = fresh.cfg, fresh.plan, fresh.allowExt, fresh.allowName
	d.longestWindow = fresh.longestWindow
}

// Stats returns counters and the number of keys tracked now.
func (d *Detector) Stats() Stats {
	s := d.stats
	s.Extensions = len(d.exts)
	s.Addresses = len(d.addrs)
	return s
}

// Process feeds one event and appends the alerts it raised to out. Events
// must come in stream order; time is taken from ev.Time and never goes
// backwards (an older time counts as the newest seen).
//
// A forged event (one that repeats a header the guard attributes by, see
// [ami.Decode]) is counted in Stats.Forged and otherwise ignored: whatever
// it names, it blames no one.
func (d *Detector) Process(ev *ami.Event, out []Alert) []Alert {
	if ev.Forged {
		d.stats.Forged++
		return out
	}
	d.stats.Events++
	if t := ev.Time.UnixNano(); !ev.Time.IsZero() && t > d.now {
		d.now = t
	}
	if d.now-d.lastSweep >= int64(sweepEvery) {
		d.sweep()
		d.lastSweep = d.now
	}
	d.ev, d.out = ev, out
	switch ev.Kind {
	case ami.KindNewchannel:
		d.newChannel(ev)
	case ami.KindDialBegin:
		d.dialBegin(ev)
	case ami.KindHangup:
		d.hangup(ev)
	case ami.KindSecurity:
		d.security(ev)
	case ami.KindPeerStatus:
		d.peerStatus(ev)
	case ami.KindContactStatus:
		d.contactStatus(ev)
	}
	out = d.out
	d.ev, d.out = nil, nil
	return out
}

// LiveChannels appends the names of the live channels the extension
// originated (as tracked from events) to dst.
func (d *Detector) LiveChannels(tech ami.Tech, name string, dst []string) []string {
	e := d.exts[ami.Extension{Tech: tech, Name: name}]
	if e == nil {
		return dst
	}
	for _, c := range e.calls {
		dst = append(dst, c.channel)
	}
	return dst
}

// Sources returns the addresses Asterisk received the extension's requests
// from, newest first, as in alerts.
func (d *Detector) Sources(tech ami.Tech, name string) []netip.Addr {
	e := d.exts[ami.Extension{Tech: tech, Name: name}]
	if e == nil {
		return nil
	}
	return addrList(e.sources)
}

func (d *Detector) extAllowed(k ami.Extension) bool {
	return d.allowName[k.Name] || d.allowExt[k]
}

func (d *Detector) addrAllowed(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range d.cfg.AllowNetworks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ext returns the state of k, creating it (and evicting if at the cap); nil
// when the cap is full of keys with incidents in progress.
func (d *Detector) ext(k ami.Extension) *extState {
	if e := d.exts[k]; e != nil {
		e.lastSeen = d.now
		d.extQ.touch(e)
		return e
	}
	if len(d.exts) >= d.cfg.MaxExtensions {
		victim := d.extQ.stalestIdle(evictScan, func(e *extState) bool { return e.incident > d.now })
		if victim == nil {
			d.stats.Untracked++
			return nil
		}
		d.dropExt(victim)
		d.stats.Evicted++
	}
	k.Name = strings.Clone(k.Name)
	// Local channels are made by the PBX itself (Originate, call files):
	// whoever asked for them authenticated elsewhere.
	e := &extState{key: k, lastSeen: d.now, authed: k.Tech == ami.TechLocal}
	d.exts[k] = e
	d.extPeak = max(d.extPeak, len(d.exts))
	d.extQ.pushFront(e)
	return e
}

func (d *Detector) dropExt(e *extState) {
	for _, c := range e.calls {
		if d.calls[c.uniqueid] == e {
			delete(d.calls, c.uniqueid)
		}
	}
	if e.act != nil {
		d.actQ.remove(e.act)
		e.act = nil
	}
	d.extQ.remove(e)
	delete(d.exts, e.key)
}

func (d *Detector) addr(a netip.Addr) *addrState {
	if s := d.addrs[a.As16()]; s != nil {
		s.lastSeen = d.now
		d.addrQ.touch(s)
		return s
	}
	if len(d.addrs) >= d.cfg.MaxAddresses {
		victim := d.addrQ.stalestIdle(evictScan, func(a *addrState) bool { return a.incident > d.now })
		if victim == nil {
			d.stats.Untracked++
			return nil
		}
		d.addrQ.remove(victim)
		delete(d.addrs, victim.addr.As16())
		d.stats.Evicted++
	}
	s := &addrState{addr: a, lastSeen: d.now}
	d.addrs[a.As16()] = s
	d.addrPeak = max(d.addrPeak, len(d.addrs))
	d.addrQ.pushFront(s)
	return s
}

// sweep drops keys idle for longer than IdleExpiry, stalest first, keeping
// those with an incident in progress or (extensions) live calls.
func (d *Detector) sweep() {
	if d.cfg.IdleExpiry <= 0 {
		return
	}
	cut := d.now - int64(d.cfg.IdleExpiry)
	for e := d.extQ.back; e != nil && e.lastSeen < cut; {
		prev := d.extQ.prevOf(e)
		if e.incident <= d.now && len(e.calls) == 0 {
			d.dropExt(e)
			d.stats.Expired++
		}
		e = prev
	}
	for a := d.addrQ.back; a != nil && a.lastSeen < cut; {
		prev := d.addrQ.prevOf(a)
		if a.incident <= d.now {
			d.addrQ.remove(a)
			delete(d.addrs, a.addr.As16())
			d.stats.Expired++
		}
		a = prev
	}
	// Call state whose every window has passed is released.
	actCut := d.now - int64(d.longestWindow)
	for a := d.actQ.back; a != nil && a.last < actCut; {
		prev := d.actQ.prevOf(a)
		d.actQ.remove(a)
		a.owner.act = nil
		a = prev
	}
	// Go maps never shrink: once a flood has drained, move what is left
	// to fresh maps so the memory it took is given back.
	d.exts, d.extPeak = shrink(d.exts, d.extPeak)
	d.addrs, d.addrPeak = shrink(d.addrs, d.addrPeak)
	d.calls, d.callsPeak = shrink(d.calls, d.callsPeak)
}

// shrink copies m into a map of its current size when it holds less than a
// quarter of its peak, and returns the map and the peak to keep.
func shrink[K comparable, V any](m map[K]V, peak int) (map[K]V, int) {
	if len(m) > peak {
		peak = len(m)
	}
	if peak < 4096 || len(m) >= peak/4 {
		return m, peak
	}
	fresh := make(map[K]V, len(m))
	for k, v := range m {
		fresh[k] = v
	}
	return fresh, len(m)
}

// ---- calls ----

// IsCall reports whether a Newchannel is a call its channel's endpoint
// originated, as opposed to a leg Asterisk created toward someone (the
// outbound leg of a Dial, a Local channel's second half). Only those are
// counted for the extension in the channel name.
func IsCall(ev *ami.Event) bool {
	return isCall(ev.Channel, ev.Uniqueid, ev.Linkedid, ev.Exten)
}

// isCall decides from a channel's name, ids and dialplan extension:
//
//   - Asterisk 12 and later: the call's first channel gives the call its
//     Linkedid, so a channel whose Uniqueid equals its Linkedid started
//     the call; every leg made for it carries the Linkedid of that first
//     channel.
//   - Asterisk 1.8 and 11 send no Linkedid at all. There a channel that a
//     phone or a trunk brought in is created with the extension it asked
//     for (the dialled number, `s` when none), while a channel Asterisk
//     requests for a Dial or an Originate is created with an empty Exten
//     (observed on 11: the caller's leg has Exten = the number, the carrier
//     leg an empty Exten, and it is named as Dial's Destination right
//     after). So a channel with an Exten is a call of its endpoint: an
//     extension's outgoing calls and a trunk's incoming ones alike; the leg
//     that rings the carrier, or rings an extension, is not. Local channels
//     are left out: both halves carry the Local extension whether a phone
//     dialled them (a ring group, a queue member, follow-me) or the PBX
//     originated them, so without Linkedid a leg cannot be told from a
//     call, and counting them would count every ring-group call for each
//     member.
func isCall(channel, uniqueid, linkedid, exten string) bool {
	switch {
	case uniqueid == "":
		return false
	case linkedid != "":
		return uniqueid == linkedid
	}
	return exten != "" && !strings.HasPrefix(channel, "Local/")
}

func (d *Detector) newChannel(ev *ami.Event) {
	if !IsCall(ev) {
		return // a leg created toward someone, not a call this channel originated
	}
	cn, ok := ami.ParseChannel(ev.Channel)
	if !ok {
		return
	}
	k := ami.Extension{Tech: cn.Tech, Name: cn.Name}
	if d.extAllowed(k) {
		return
	}
	number := ""
	if IsDialled(ev.Exten) {
		number = ev.Exten
		if d.plan.allowed(number) {
			return
		}
	}
	e := d.ext(k)
	if e == nil {
		return
	}
	if len(e.calls) < maxCallsPerExt {
		uid := strings.Clone(ev.Uniqueid)
		e.calls = append(e.calls, liveCall{uniqueid: uid, channel: strings.Clone(ev.Channel), number: number})
		if len(d.calls) < maxCallIndex {
			d.calls[uid] = e
			d.callsPeak = max(d.callsPeak, len(d.calls))
		}
	}
	cfg := &d.cfg
	d.activity(e).burst.add(d.now, ringSize(cfg.CallRateBurst))
	d.activity(e).rate.add(d.now, ringSize(cfg.CallRate))
	if number != "" {
		d.activity(e).numbers.add(number)
	}
	d.checkExt(e, RuleCallRate, cfg.CallRateBurst, d.activity(e).burst.since(d.now-int64(cfg.CallRateBurst.Window)), "calls started")
	d.checkExt(e, RuleCallRate, cfg.CallRate, d.activity(e).rate.since(d.now-int64(cfg.CallRate.Window)), "calls started")
	d.checkExt(e, RuleConcurrent, cfg.Concurrent, len(e.calls), "live calls")
	if number != "" {
		d.dialled(e, number)
	}
}

// dialled runs the number rules for one call of e.
func (d *Detector) dialled(e *extState, number string) {
	cfg := &d.cfg
	if intl, risky, _ := d.plan.international(number); intl {
		d.activity(e).intl.add(d.now, ringSize(cfg.International))
		d.checkExt(e, RuleInternational, cfg.International, d.activity(e).intl.since(d.now-int64(cfg.International.Window)), "international calls")
		if risky {
			d.activity(e).highRisk.add(d.now, ringSize(cfg.HighRisk))
			d.checkExt(e, RuleInternational, cfg.HighRisk, d.activity(e).highRisk.since(d.now-int64(cfg.HighRisk.Window)), "calls to high-risk countries")
		}
	}
	if prefix, dest, ok := d.plan.split(number); ok && cfg.PrefixGuess.Window > 0 {
		n := d.activity(e).notePrefix(prefix, dest, d.now, int64(cfg.PrefixGuess.Window), ringSize(cfg.PrefixGuess))
		d.checkExt(e, RulePrefixGuess, cfg.PrefixGuess, n, "distinct prefixes for one destination")
	}
}

func (d *Detector) dialBegin(ev *ami.Event) {
	// Only a call whose number was not known at Newchannel (Originate, call
	// files, Local channels; a trunk's call answered by `s` that dials out
	// again) learns it here, from the linked call. Asterisk 1.8/11 send no
	// Linkedid: there only a channel that is itself the call can name it.
	call := ev.Linkedid
	if call == "" {
		call = ev.Uniqueid
	}
	e := d.calls[call]
	if e == nil {
		return
	}
	for i := range e.calls {
		c := &e.calls[i]
		if c.uniqueid != call {
			continue
		}
		if c.number != "" {
			return
		}
		num := dialNumber(ev)
		if num == "" || d.plan.allowed(num) {
			return
		}
		c.number = strings.Clone(num)
		d.activity(e).numbers.add(num)
		d.dialled(e, c.number)
		return
	}
}

// dialNumber finds the dialled number in a DialBegin: the outbound leg's
// Exten, else the last part of the dial string (SIP/carrier/0044..., carrier/0044...,
// PJSIP/0044...@carrier).
func dialNumber(ev *ami.Event) string {
	if IsDialled(ev.DestExten) {
		return ev.DestExten
	}
	s := ev.DialString
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	if IsDialled(s) {
		return s
	}
	return ""
}

func (d *Detector) hangup(ev *ami.Event) {
	// A 1.8/11 Hangup has neither Linkedid nor Exten: whether the channel
	// was a call was decided at its Newchannel, and only a tracked call
	// counts when it ends.
	legacy := ev.Linkedid == ""
	if ev.Uniqueid == "" || !legacy && ev.Uniqueid != ev.Linkedid {
		return
	}
	e := d.calls[ev.Uniqueid]
	if e != nil {
		delete(d.calls, ev.Uniqueid)
	} else if cn, ok := ami.ParseChannel(ev.Channel); ok {
		e = d.exts[ami.Extension{Tech: cn.Tech, Name: cn.Name}] // a call the index had no room for
	}
	if e == nil {
		return
	}
	tracked := false
	for i := range e.calls {
		if e.calls[i].uniqueid == ev.Uniqueid {
			e.calls = slices.Delete(e.calls, i, i+1)
			tracked = true
			break
		}
	}
	if legacy && !tracked {
		return
	}
	switch ev.Cause {
	case 1, 3, 28: // unallocated number, no route to destination, invalid number format
		e.lastSeen = d.now
		d.activity(e).probes.add(d.now, ringSize(d.cfg.FailedProbes))
		d.checkExt(e, RuleFailedProbes, d.cfg.FailedProbes, d.activity(e).probes.since(d.now-int64(d.cfg.FailedProbes.Window)), "unroutable calls")
	}
}

// ---- security ----

func serviceTech(s string) (ami.Tech, bool) {
	switch s {
	case "SIP":
		return ami.TechSIP, true
	case "PJSIP":
		return ami.TechPJSIP, true
	case "IAX2":
		return ami.TechIAX2, true
	}
	return ami.ParseTech(s)
}

func (d *Detector) security(ev *ami.Event) {
	switch ev.Security {
	case ami.SecSuccessfulAuth:
		tech, ok := serviceTech(ev.Service)
		if !ok || !ev.RemoteAddr.IsValid() || !ami.ValidName(ev.AccountID) {
			return // AMI logins included: not an extension
		}
		k := ami.Extension{Tech: tech, Name: ev.AccountID}
		if d.extAllowed(k) {
			return
		}
		if e := d.ext(k); e != nil {
			// The request came from RemoteAddress whatever UsingPassword
			// says; only a password proves the sender holds the secret.
			if ev.UsingPassword {
				e.authed = true
			}
			d.learnSource(e, ev.RemoteAddr)
		}
	case ami.SecFailedACL:
		if ev.ACLName == "no_extension_match" {
			d.failedProbe(ev)
			return
		}
		d.authFailure(ev)
	case ami.SecInvalidPassword, ami.SecChallengeResponseFailed, ami.SecInvalidAccountID:
		d.authFailure(ev)
	}
}

func (d *Detector) failedProbe(ev *ami.Event) {
	if !ev.RemoteAddr.IsValid() || d.addrAllowed(ev.RemoteAddr) {
		return
	}
	a := d.addr(ev.RemoteAddr.Unmap())
	if a == nil {
		return
	}
	if IsDialled(ev.AccountID) {
		addSample(&a.numbers, ev.AccountID)
	}
	a.probes.add(d.now, ringSize(d.cfg.FailedProbes))
	d.checkAddr(a, RuleFailedProbes, d.cfg.FailedProbes, a.probes.since(d.now-int64(d.cfg.FailedProbes.Window)), "unroutable attempts")
}

// dialledAccount reports whether a chan_sip AccountID is the dialled number of
// an INVITE (chan_sip puts the Request-URI user there) rather than a user name.
func dialledAccount(ev *ami.Event) bool {
	if ev.Service != "SIP" || !IsDialled(ev.AccountID) {
		return false
	}
	return ev.AccountID[0] == '+' || len(ev.AccountID) >= dialledAccountLen
}

func (d *Detector) authFailure(ev *ami.Event) {
	if !ev.RemoteAddr.IsValid() || d.addrAllowed(ev.RemoteAddr) {
		return
	}
	a := d.addr(ev.RemoteAddr.Unmap())
	if a == nil {
		return
	}
	if dialledAccount(ev) {
		addSample(&a.numbers, ev.AccountID)
	} else if acct := ev.AccountID; acct != "<unknown>" && ami.ValidName(acct) {
		switch {
		case a.firstAccount == "":
			a.firstAccount = strings.Clone(acct)
		case a.firstAccount != acct:
			if a.accounts == nil {
				addSample(&a.accounts, a.firstAccount)
			}
			addSample(&a.accounts, acct)
		}
	}
	// PJSIP raises several events for one request under its Call-ID;
	// chan_sip's SessionID is a reused memory address, never a key.
	if ev.Service == "PJSIP" && ev.SessionID != "" {
		if a.session == ev.SessionID && d.now-a.sessionAt < int64(sessionDedupe) {
			return
		}
		a.session, a.sessionAt = strings.Clone(ev.SessionID), d.now
	}
	a.auth.add(d.now, ringSize(d.cfg.AuthFailures))
	d.checkAddr(a, RuleAuthFailures, d.cfg.AuthFailures, a.auth.since(d.now-int64(d.cfg.AuthFailures.Window)), "failed authentications")
}

// ---- address hints ----

// peerStatus: a registration Asterisk accepted proves the peer holds its
// secret. Its Address is where Asterisk will send to, which chan_sip takes
// from the client's Contact header unless nat= makes it use the packet's
// source: a contact, never a source.
func (d *Detector) peerStatus(ev *ami.Event) {
	registered := ev.Status == "Registered"
	if !registered && ev.Status != "Reachable" {
		return
	}
	cn, ok := peerName(ev.Peer)
	if !ok || d.extAllowed(cn) {
		return
	}
	if !registered && !ev.Addr.IsValid() {
		return
	}
	if e := d.ext(cn); e != nil {
		if registered {
			e.authed = true
		}
		if ev.Addr.IsValid() {
			learnContact(e, ev.Addr, d.now)
		}
	}
}

func (d *Detector) contactStatus(ev *ami.Event) {
	if ev.Status == "Removed" || ev.Status == "Unreachable" || !ev.Addr.IsValid() || !ami.ValidName(ev.Peer) {
		return
	}
	k := ami.Extension{Tech: ami.TechPJSIP, Name: ev.Peer}
	if d.extAllowed(k) {
		return
	}
	if e := d.ext(k); e != nil {
		learnContact(e, ev.Addr, d.now)
	}
}

// peerName splits "SIP/200" into its key.
func peerName(p string) (ami.Extension, bool) {
	tech, name, ok := strings.Cut(p, "/")
	if !ok || !ami.ValidName(name) {
		return ami.Extension{}, false
	}
	t, ok := ami.ParseTech(tech)
	if !ok {
		return ami.Extension{}, false
	}
	return ami.Extension{Tech: t, Name: name}, true
}

// learnSource records an address Asterisk received a request of e from. One
// the extension has not used before raises new_source, except the very
// first, which is learned.
func (d *Detector) learnSource(e *extState, addr netip.Addr) {
	addr = addr.Unmap()
	for i := range e.sources {
		if e.sources[i].addr == addr {
			e.sources[i].seen = d.now
			return
		}
	}
	if len(e.sources) > 0 {
		d.newSource(e, addr)
	}
	e.sources = remember(e.sources, seenAddr{addr: addr, seen: d.now}, maxSourcesPerExt)
}

// learnContact records a client-supplied address of e. A new contact does
// not raise new_source: the client writes whatever it likes there (a
// phone's private address behind NAT, or someone else's address to draw
// suspicion onto it), and the request that carried it also raised the
// SuccessfulAuth whose RemoteAddress, where the packets really came from,
// raises new_source when it is new.
func learnContact(e *extState, addr netip.Addr, now int64) {
	addr = addr.Unmap()
	for i := range e.contacts {
		if e.contacts[i].addr == addr {
			e.contacts[i].seen = now
			return
		}
	}
	e.contacts = remember(e.contacts, seenAddr{addr: addr, seen: now}, maxContactsPerExt)
}

// remember adds a to list, replacing the stalest entry when list has n.
func remember(list []seenAddr, a seenAddr, n int) []seenAddr {
	if len(list) < n {
		return append(list, a)
	}
	victim := 0
	for i := range list {
		if list[i].seen < list[victim].seen {
			victim = i
		}
	}
	list[victim] = a
	return list
}

func (d *Detector) newSource(e *extState, addr netip.Addr) {
	if !d.cfg.NewSource {
		return
	}
	al := d.extAlert(e, RuleNewSource, Warning, 1, 0, "authenticated from an address it has not used before")
	al.Sources = append([]netip.Addr{addr}, slices.DeleteFunc(al.Sources, func(a netip.Addr) bool { return a == addr })...)
	d.emit(al)
}

// addrList returns the addresses of list, newest first.
func addrList(list []seenAddr) []netip.Addr {
	if len(list) == 0 {
		return nil
	}
	ss := slices.Clone(list)
	slices.SortStableFunc(ss, func(a, b seenAddr) int {
		switch {
		case a.seen > b.seen:
			return -1
		case a.seen < b.seen:
			return 1
		}
		return 0
	})
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = s.addr
	}
	return out
}

// ---- alerts ----

// level says which severity count reaches, or 0.
func level(t Threshold, count int) Severity {
	switch {
	case t.Critical > 0 && count >= t.Critical:
		return Critical
	case t.Warning > 0 && count >= t.Warning:
		return Warning
	}
	return 0
}

// allow applies the cool-down: one alert per rule, key and severity per
// Cooldown, and no warning while a critical of the same rule is cooling down.
func (d *Detector) allow(pair *[2]uint32, sev Severity) bool {
	cd := uint32(d.cfg.Cooldown / time.Second)
	now := d.secs()
	last := &pair[sev-1]
	if *last != 0 && now-*last < cd {
		return false
	}
	if sev == Warning {
		if c := pair[Critical-1]; c != 0 && now-c < cd {
			return false
		}
	}
	*last = now
	return true
}

// secs is the time in whole seconds since the detector's first event, plus
// one so that 0 means never.
func (d *Detector) secs() uint32 {
	if d.base == 0 {
		d.base = d.now
	}
	return uint32((d.now-d.base)/int64(time.Second)) + 1
}

func (d *Detector) checkExt(e *extState, r Rule, t Threshold, count int, what string) {
	sev := level(t, count)
	if sev == 0 || !d.allow(&e.alerts[r-1], sev) {
		return
	}
	a := d.extAlert(e, r, sev, count, t.Window, what)
	if sev == Critical && !e.authed && !d.cfg.UnauthenticatedCritical {
		// Still said once per cool-down (it took the critical's turn), but
		// as a warning: nothing acts on it.
		a.Severity, a.Note = Warning, unauthNote
	}
	d.emit(a)
}

const unauthNote = "capped at warning: this endpoint was never seen authenticating with its secret (a REGISTER Asterisk accepted, or a SuccessfulAuth with UsingPassword 1): a trunk or a peer matched by its address?; list trunks in allow.extensions"

func (d *Detector) extAlert(e *extState, r Rule, sev Severity, count int, window time.Duration, what string) Alert {
	e.incident = max(e.incident, d.now+int64(d.cfg.Cooldown))
	return Alert{
		Time:      d.ev.Time,
		Seq:       d.ev.Seq,
		Rule:      r,
		Severity:  sev,
		Tech:      e.key.Tech,
		Extension: e.key.Name,
		Sources:   addrList(e.sources),
		Contacts:  addrList(e.contacts),
		Count:     count,
		Window:    window,
		Numbers:   e.numberList(),
		Reason:    what,
	}
}

func (d *Detector) checkAddr(a *addrState, r Rule, t Threshold, count int, what string) {
	sev := level(t, count)
	pair := &a.alerts[0]
	if r == RuleFailedProbes {
		pair = &a.alerts[1]
	}
	if sev == 0 || !d.allow(pair, sev) {
		return
	}
	a.incident = max(a.incident, d.now+int64(d.cfg.Cooldown))
	d.emit(Alert{
		Time:     d.ev.Time,
		Seq:      d.ev.Seq,
		Rule:     r,
		Severity: sev,
		IP:       a.addr,
		Accounts: a.accountList(),
		Count:    count,
		Window:   t.Window,
		Numbers:  a.numbers.list(),
		Reason:   what,
	})
}

func (d *Detector) emit(a Alert) {
	if a.Time.IsZero() && d.now != 0 {
		a.Time = time.Unix(0, d.now).UTC()
	}
	d.stats.Alerts++
	d.out = append(d.out, a)
}

// LiveChannel is a channel Asterisk lists as up (CoreShowChannels). On
// Asterisk 1.8 and 11 Linkedid is empty.
type LiveChannel struct {
	Channel, Uniqueid, Linkedid, Exten string
}

// LiveChannelFrom reads a CoreShowChannel list item of any Asterisk
// version. get returns the value of a header, "" when absent, with the key's
// case ignored (Asterisk 11 spells UniqueID). Asterisk 12 and later send
// Channel, Uniqueid, Linkedid and Exten; 1.8 and 11 send Channel, UniqueID
// and Extension, and no Linkedid.
func LiveChannelFrom(get func(key string) string) LiveChannel {
	c := LiveChannel{Channel: get("Channel"), Uniqueid: get("Uniqueid"), Linkedid: get("Linkedid"), Exten: get("Exten")}
	if c.Exten == "" {
		c.Exten = get("Extension")
	}
	return c
}

// Resync replaces the tracked live calls with what Asterisk says is up, after
// a (re)connect in which events may have been lost: calls whose Hangup was
// missed are dropped, and calls that started unseen are added and run
// through the concurrent and number rules, so an attack that began while the
// guard was blind is still caught. Call rates are not fed: the start times of
// unseen calls are not known well enough.
func (d *Detector) Resync(now time.Time, live []LiveChannel, out []Alert) []Alert {
	if t := now.UnixNano(); t > d.now {
		d.now = t
	}
	ev := &ami.Event{Time: now}
	d.ev, d.out = ev, out
	up := make(map[string]bool, len(live))
	for _, c := range live {
		up[c.Uniqueid] = true
	}
	for _, e := range d.exts {
		e.calls = slices.DeleteFunc(e.calls, func(c liveCall) bool {
			if up[c.uniqueid] {
				return false
			}
			if d.calls[c.uniqueid] == e {
				delete(d.calls, c.uniqueid)
			}
			return true
		})
	}
	for _, c := range live {
		if !isCall(c.Channel, c.Uniqueid, c.Linkedid, c.Exten) || d.calls[c.Uniqueid] != nil {
			continue
		}
		cn, ok := ami.ParseChannel(c.Channel)
		if !ok {
			continue
		}
		k := ami.Extension{Tech: cn.Tech, Name: cn.Name}
		if d.extAllowed(k) {
			continue
		}
		number := ""
		if IsDialled(c.Exten) && !d.plan.allowed(c.Exten) {
			number = c.Exten
		}
		e := d.ext(k)
		if e == nil || len(e.calls) >= maxCallsPerExt {
			continue
		}
		uid := strings.Clone(c.Uniqueid)
		e.calls = append(e.calls, liveCall{uniqueid: uid, channel: strings.Clone(c.Channel), number: number})
		if len(d.calls) < maxCallIndex {
			d.calls[uid] = e
			d.callsPeak = max(d.callsPeak, len(d.calls))
		}
		if number != "" {
			d.activity(e).numbers.add(number)
			d.dialled(e, number)
		}
	}
	for _, e := range d.exts {
		if len(e.calls) > 0 {
			d.checkExt(e, RuleConcurrent, d.cfg.Concurrent, len(e.calls), "live calls")
		}
	}
	out = d.out
	d.ev, d.out = nil, nil
	return out
}
