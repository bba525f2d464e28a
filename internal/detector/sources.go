package detector

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/astguard/astguard/internal/ami"
)

// Where an extension authenticates from: the addresses Asterisk saw its
// packets come from (sources) and those its client supplied (contacts).

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
