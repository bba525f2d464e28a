package detector

import (
	"encoding/binary"
	"net/netip"
	"strings"

	"github.com/astguard/astguard/internal/ami"
)

// The detector's state per extension and per address, and its
// eviction: the caps hold whatever an attacker sends.

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

// addrState is the state of a source: one address, or an IPv6 network
// (Config.IPv6Prefix), keyed by the network's address.
type addrState struct {
	link[addrState]
	addr     netip.Addr // the last address seen in the network
	bits     uint8      // the network's length, as when the state was made
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

// net is the network a counts.
func (a *addrState) net() netip.Prefix {
	return netip.PrefixFrom(a.addr, int(a.bits)).Masked()
}

// key is a's key in Detector.addrs.
func (a *addrState) key() [16]byte { return a.net().Addr().As16() }

// addrKey returns the key and the network length of source a: an IPv6
// address counts with its network of Config.IPv6Prefix bits.
func (d *Detector) addrKey(a netip.Addr) ([16]byte, uint8) {
	bits := a.BitLen()
	if a.Is6() && d.cfg.IPv6Prefix > 0 && d.cfg.IPv6Prefix < bits {
		bits = d.cfg.IPv6Prefix
		a = netip.PrefixFrom(a, bits).Masked().Addr()
	}
	return a.As16(), uint8(bits)
}

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

// addr returns the state of the source a (its network for IPv6),
// creating it (and evicting if at the cap); nil when the cap is full of
// sources with incidents in progress.
func (d *Detector) addr(a netip.Addr) *addrState {
	key, bits := d.addrKey(a)
	if s := d.addrs[key]; s != nil {
		s.addr = a
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
		delete(d.addrs, victim.key())
		d.stats.Evicted++
	}
	s := &addrState{addr: a, bits: bits, lastSeen: d.now}
	d.addrs[key] = s
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
			delete(d.addrs, a.key())
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
