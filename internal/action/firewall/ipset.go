package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Sets names the guard's four kernel address sets, after its chain: the
// single addresses (hash:ip) and the networks (hash:net) of each family.
type Sets struct {
	Addr4, Net4, Addr6, Net6 string
}

// SetNames returns the sets of chain: CHAIN-a4, CHAIN-n4, CHAIN-a6 and
// CHAIN-n6 (at most 31 characters, as ipset allows, for a chain of at most
// 28).
func SetNames(chain string) Sets {
	return Sets{Addr4: chain + "-a4", Net4: chain + "-n4", Addr6: chain + "-a6", Net6: chain + "-n6"}
}

func (s Sets) all() []string { return []string{s.Addr4, s.Net4, s.Addr6, s.Net6} }

// maxSetElements is the most entries one set holds (ipset's maxelem; the
// kernel's default, 65536, is less than a large blocklist). Memory grows
// with the entries, not with this bound.
const maxSetElements = 1 << 20

// setTable lists the netlink calls IPSet makes (netlinkSets, a
// *netlink.Handle on the netfilter protocol with batches of adds; IPSet
// calls it through safeSets), so tests can fake them and fail them on
// purpose.
type setTable interface {
	IpsetProtocol() (uint8, uint8, error)
	IpsetCreate(name, typename string, opts netlink.IpsetCreateOptions) error
	IpsetDestroy(name string) error
	IpsetFlush(name string) error
	IpsetList(name string) (*netlink.IPSetResult, error)
	IpsetAdd(name string, e *netlink.IPSetEntry) error
	IpsetDel(name string, e *netlink.IPSetEntry) error
	// IpsetAddMany adds entries as IpsetAdd with Replace does, many at a
	// time; the first failure is returned.
	IpsetAddMany(name string, entries []netlink.IPSetEntry) error
}

var _ setTable = (*netlinkSets)(nil)

// safeSets turns a panic of the netlink library into an error. Its ipset
// calls assert that every error of a request is a syscall.Errno, and panic
// on the others (a reply from the wrong sender, an interrupted dump): a
// firewall call must fail, never bring the guard down.
type safeSets struct{ t setTable }

func recovered(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("netlink ipset request failed: %v", r)
	}
}

func (s safeSets) IpsetProtocol() (p, min uint8, err error) {
	defer recovered(&err)
	return s.t.IpsetProtocol()
}

func (s safeSets) IpsetCreate(name, typename string, opts netlink.IpsetCreateOptions) (err error) {
	defer recovered(&err)
	return s.t.IpsetCreate(name, typename, opts)
}

func (s safeSets) IpsetDestroy(name string) (err error) {
	defer recovered(&err)
	return s.t.IpsetDestroy(name)
}

func (s safeSets) IpsetFlush(name string) (err error) {
	defer recovered(&err)
	return s.t.IpsetFlush(name)
}

func (s safeSets) IpsetList(name string) (r *netlink.IPSetResult, err error) {
	defer recovered(&err)
	return s.t.IpsetList(name)
}

func (s safeSets) IpsetAdd(name string, e *netlink.IPSetEntry) (err error) {
	defer recovered(&err)
	return s.t.IpsetAdd(name, e)
}

func (s safeSets) IpsetDel(name string, e *netlink.IPSetEntry) (err error) {
	defer recovered(&err)
	return s.t.IpsetDel(name, e)
}

func (s safeSets) IpsetAddMany(name string, entries []netlink.IPSetEntry) (err error) {
	defer recovered(&err)
	return s.t.IpsetAddMany(name, entries)
}

// IPSet is the Firewall on kernel address sets: per family a hash:ip set
// of single addresses and a hash:net set of networks, created and changed
// over netlink, and in our chain (iptables or ip6tables, either backend)
// one rule per set, `-m set --match-set SET src -j DROP`. A packet costs
// one lookup per set whatever the number of bans, and a ban one netlink
// message. Every entry carries a kernel timeout (Entry.Timeout, at most
// MaxSetTimeout; 0 counts as the most): the kernel forgets an entry whose
// owner is gone, and the bans manager renews the longer ones. Safe for
// concurrent use.
type IPSet struct {
	log  zerolog.Logger
	ipt  *IPTables // the chain, its jump and the match rules
	sets Sets
	t    setTable
	keep bool
	cut  *flowCutter

	mu sync.Mutex
	// checked: the chain, its jump, the sets and their rules were found
	// in place by the last Setup or Block; Blocked clears it when it finds
	// a piece missing, so the next Block repairs it. A Block in between
	// costs netlink messages only.
	checked bool
}

var _ Firewall = (*IPSet)(nil)

// NewIPSet finds iptables (and ip6tables) as NewIPTables does and checks
// that the kernel answers ipset requests over netlink (this needs
// CAP_NET_ADMIN). It changes nothing. A kernel without ipset is an error
// wrapping ErrSetsUnavailable.
func NewIPSet(opts Options) (*IPSet, error) {
	ipt, err := NewIPTables(opts)
	if err != nil {
		return nil, err
	}
	t, err := openSets()
	if err != nil {
		return nil, err
	}
	return newIPSet(opts, ipt, t)
}

// openSets opens a netlink socket for ipset requests.
func openSets() (setTable, error) {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, &Error{Op: "init", Step: "open a netlink socket", Err: fmt.Errorf("%w: %w", ErrSetsUnavailable, err)}
	}
	return &netlinkSets{Handle: h}, nil
}

func newIPSet(opts Options, ipt *IPTables, t setTable) (*IPSet, error) {
	t = safeSets{t}
	if _, _, err := t.IpsetProtocol(); err != nil {
		return nil, &Error{Op: "init", Step: "ask the kernel for its ipset protocol", Err: fmt.Errorf("%w: %w", ErrSetsUnavailable, err)}
	}
	s := &IPSet{
		log:  ipt.log,
		ipt:  ipt,
		sets: SetNames(ipt.chain),
		t:    t,
		keep: opts.KeepRulesOnSetup,
		cut:  ipt.cut,
	}
	s.log.Debug().Strs("sets", s.familySets(true)).Msg("address sets ready")
	return s, nil
}

// familySets returns the sets of the families managed (v4, and v6 unless
// ip6tables is not managed); all: both families' sets in order.
func (s *IPSet) familySets(all bool) []string {
	out := []string{s.sets.Addr4, s.sets.Net4}
	if all || s.ipt.v6 != nil {
		out = append(out, s.sets.Addr6, s.sets.Net6)
	}
	return out
}

// setsOf returns the address set and the network set of fam.
func (s *IPSet) setsOf(fam *family) (addrs, nets string) {
	if fam.v6 {
		return s.sets.Addr6, s.sets.Net6
	}
	return s.sets.Addr4, s.sets.Net4
}

// setFor returns the set p goes in.
func (s *IPSet) setFor(p netip.Prefix) string {
	switch {
	case p.Addr().Is4() && p.IsSingleIP():
		return s.sets.Addr4
	case p.Addr().Is4():
		return s.sets.Net4
	case p.IsSingleIP():
		return s.sets.Addr6
	}
	return s.sets.Net6
}

// Setup, for each family, creates the two sets if they are missing and
// empties them (unless Options.KeepRulesOnSetup), creates our chain if it
// is missing (flushing it unless KeepRulesOnSetup), puts the two rules
// matching the sets at its top, moves the DROP rules of single addresses
// and networks a guard without sets left in the chain into the sets (then
// deletes the rules: the sets drop them already), and makes sure INPUT
// holds exactly one jump to the chain.
func (s *IPSet) Setup(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ipt.mu.Lock()
	defer s.ipt.mu.Unlock()
	var errs []error
	for _, fam := range s.ipt.families() {
		if err := s.setupFamily(ctx, fam); err != nil {
			errs = append(errs, err)
		}
	}
	s.checked = len(errs) == 0
	return errors.Join(errs...)
}

func (s *IPSet) setupFamily(ctx context.Context, fam *family) error {
	addrs, nets := s.setsOf(fam)
	for _, set := range []string{addrs, nets} {
		if err := s.ensureSet(ctx, "setup", fam, set); err != nil {
			return err
		}
		if !s.keep {
			if err := s.t.IpsetFlush(set); err != nil {
				return setError("setup", netip.Prefix{}, "flush set "+set, err)
			}
		}
	}
	exists, err := s.ipt.ensureChain(ctx, "setup", fam)
	if err != nil {
		return err
	}
	if exists && !s.keep {
		if err := fam.t.ClearChain(tableFilter, s.ipt.chain); err != nil {
			return newError("setup", netip.Prefix{}, s.ipt.step("flush", fam), err)
		}
		s.log.Info().Str("chain", s.ipt.chain).Str("family", fam.name).Msg("flushed leftover rules")
	}
	if err := s.ensureSetRules(ctx, "setup", fam); err != nil {
		return err
	}
	if exists && s.keep {
		if err := s.moveRulesIntoSets(ctx, fam); err != nil {
			return err
		}
	}
	return s.ipt.ensureJump(ctx, "setup", fam)
}

// ensureSet creates set (of fam's family, with timeout support) unless it
// exists with the same type.
func (s *IPSet) ensureSet(ctx context.Context, op string, fam *family, set string) error {
	if err := ctx.Err(); err != nil {
		return newError(op, netip.Prefix{}, "", err)
	}
	addrs, _ := s.setsOf(fam)
	typ := "hash:net"
	if set == addrs {
		typ = "hash:ip"
	}
	family := uint8(unix.AF_INET)
	if fam.v6 {
		family = unix.AF_INET6
	}
	timeout := uint32(MaxSetTimeout / time.Second)
	// Replace: an existing set of this type is not an error.
	err := s.t.IpsetCreate(set, typ, netlink.IpsetCreateOptions{Replace: true, Family: family, Timeout: &timeout, MaxElements: maxSetElements})
	if err != nil {
		return setError(op, netip.Prefix{}, "create set "+set+" ("+typ+")", err)
	}
	return nil
}

// ensureSetRules makes our chain of fam start with one rule per set of
// fam, inserting those missing at its top.
func (s *IPSet) ensureSetRules(ctx context.Context, op string, fam *family) error {
	lines, err := fam.t.List(tableFilter, s.ipt.chain)
	if err != nil {
		return newError(op, netip.Prefix{}, s.ipt.step("list", fam), err)
	}
	have := map[string]bool{}
	for _, l := range lines {
		if set := matchedSet(s.ipt.chain, l); set != "" {
			have[set] = true
		}
	}
	addrs, nets := s.setsOf(fam)
	for i, set := range []string{addrs, nets} {
		if have[set] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return newError(op, netip.Prefix{}, "", err)
		}
		if err := fam.t.Insert(tableFilter, s.ipt.chain, i+1, setSpec(set)...); err != nil {
			return newError(op, netip.Prefix{}, "insert the rule matching set "+set+" into "+s.ipt.chain+" ("+fam.name+")", err)
		}
		s.log.Info().Str("chain", s.ipt.chain).Str("set", set).Str("family", fam.name).Msg("rule matching the address set inserted")
	}
	return nil
}

// moveRulesIntoSets puts the prefixes of the DROP rules in our chain into
// the sets, for the longest timeout (the bans manager shortens nothing: it
// removes an entry when its ban ends), then deletes the rules. s.ipt.mu
// must be held.
func (s *IPSet) moveRulesIntoSets(ctx context.Context, fam *family) error {
	rules, _, err := s.ipt.listDrops(ctx, "setup", fam)
	if err != nil || len(rules) == 0 {
		return err
	}
	entries := make([]Entry, 0, len(rules))
	doomed := make(map[netip.Prefix]bool, len(rules))
	for _, r := range rules {
		p, err := NormalizePrefix(r.prefix)
		if err != nil {
			continue // not one a ban makes: left alone
		}
		entries = append(entries, Entry{Prefix: p})
		doomed[p] = true
	}
	if err := s.add(ctx, "setup", entries); err != nil {
		return err
	}
	if err := s.ipt.deleteDrops(ctx, fam, doomed, netip.Prefix{}); err != nil {
		return err
	}
	s.log.Warn().Int("count", len(entries)).Str("chain", s.ipt.chain).Str("family", fam.name).
		Msg("DROP rules of an earlier run moved into the address sets")
	return nil
}

// add puts entries into their sets, renewing the timeout of those there
// already: one entry with IpsetAdd, more in batches (IpsetAddMany). A
// missing set is created (someone destroyed it) and the add tried again.
func (s *IPSet) add(ctx context.Context, op string, entries []Entry) error {
	if err := ctx.Err(); err != nil {
		return newError(op, netip.Prefix{}, "", err)
	}
	bySet := map[string][]netlink.IPSetEntry{}
	var order []string
	var one netip.Prefix
	if len(entries) == 1 {
		one = entries[0].Prefix
	}
	for _, en := range entries {
		set := s.setFor(en.Prefix)
		secs := setTimeout(en.Timeout)
		e := netlink.IPSetEntry{IP: net.IP(en.Prefix.Addr().AsSlice()), Timeout: &secs, Replace: true}
		if !en.Prefix.IsSingleIP() {
			e.CIDR = uint8(en.Prefix.Bits())
		}
		if _, ok := bySet[set]; !ok {
			order = append(order, set)
		}
		bySet[set] = append(bySet[set], e)
	}
	for _, set := range order {
		es := bySet[set]
		put := func() error {
			if len(es) == 1 {
				return s.t.IpsetAdd(set, &es[0])
			}
			return s.t.IpsetAddMany(set, es)
		}
		err := put()
		if isNoSet(err) {
			fam := s.ipt.v4
			if set == s.sets.Addr6 || set == s.sets.Net6 {
				fam = s.ipt.v6
			}
			if err := s.ensureSet(ctx, op, fam, set); err != nil {
				return withPrefix(err, one)
			}
			s.checked = false // its rule may be gone too
			s.log.Warn().Str("set", set).Msg("address set was missing, created again")
			err = put()
		}
		if err != nil {
			return setError(op, one, "add to set "+set, err)
		}
	}
	return nil
}

// setTimeout is the kernel timeout, in seconds, of an entry meant to last
// d (0: for good): d rounded up, at most MaxSetTimeout.
func setTimeout(d time.Duration) uint32 {
	if d <= 0 || d >= MaxSetTimeout {
		return uint32(MaxSetTimeout / time.Second)
	}
	return uint32((d + time.Second - 1) / time.Second)
}

// Block adds each entry to its set (a single address to the family's
// hash:ip set, a network to its hash:net set) with its timeout, renewing
// the timeout of an entry there already; then, if a piece was found
// missing since (Blocked), it repairs the chain, its jump and the rules
// matching the sets. Right after, in the background, the conntrack
// entries of all the prefixes are deleted (see flowCutter).
func (s *IPSet) Block(ctx context.Context, entries ...Entry) error {
	v4, v6, err := s.ipt.checkEntries(entries)
	if err != nil {
		return err
	}
	all := append(v4, v6...)
	s.mu.Lock()
	err = s.add(ctx, "block", all)
	if err == nil && !s.checked {
		err = s.repair(ctx, all)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if len(all) == 1 {
		s.log.Info().Str("ip", PrefixString(all[0].Prefix)).Str("set", s.setFor(all[0].Prefix)).Str("comment", all[0].Comment).Msg("address blocked")
	} else {
		s.log.Info().Int("count", len(all)).Msg("addresses blocked")
	}
	s.cut.cut(all)
	return nil
}

// repair makes sure our chain, its jump and the rules matching the sets
// are in place for the families of entries. s.mu must be held.
func (s *IPSet) repair(ctx context.Context, entries []Entry) error {
	var one netip.Prefix
	if len(entries) == 1 {
		one = entries[0].Prefix
	}
	s.ipt.mu.Lock()
	defer s.ipt.mu.Unlock()
	for _, fam := range s.ipt.families() {
		if !slices.ContainsFunc(entries, func(e Entry) bool { return s.ipt.familyOf(e.Prefix) == fam }) {
			continue
		}
		if _, err := s.ipt.ensureChain(ctx, "block", fam); err != nil {
			return withPrefix(err, one)
		}
		if err := s.ensureSetRules(ctx, "block", fam); err != nil {
			return withPrefix(err, one)
		}
		if err := s.ipt.ensureJump(ctx, "block", fam); err != nil {
			return withPrefix(err, one)
		}
	}
	s.checked = true
	return nil
}

// Unblock deletes each prefix from its set. An entry or set that is not
// there is success, and so is an IPv6 prefix while IPv6 is not managed.
func (s *IPSet) Unblock(ctx context.Context, prefixes ...netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	removed := 0
	var last netip.Prefix
	for i, p := range prefixes {
		n, err := NormalizePrefix(p)
		if err != nil {
			return &Error{Op: "unblock", Err: err}
		}
		if s.ipt.familyOf(n) == nil {
			continue
		}
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return newError("unblock", netip.Prefix{}, "", err)
			}
		}
		e := netlink.IPSetEntry{IP: net.IP(n.Addr().AsSlice())}
		if !n.IsSingleIP() {
			e.CIDR = uint8(n.Bits())
		}
		set := s.setFor(n)
		err = s.t.IpsetDel(set, &e)
		switch {
		case err == nil:
			removed++
			last = n
		case isNoSet(err) || isNotInSet(err):
		default:
			return setError("unblock", n, "delete from set "+set, err)
		}
	}
	switch {
	case removed == 1:
		s.log.Info().Str("ip", PrefixString(last)).Str("set", s.setFor(last)).Msg("address unblocked")
	case removed > 1:
		s.log.Info().Int("count", removed).Msg("addresses unblocked")
	}
	return nil
}

// Blocked returns the entries of the sets, each with the timeout the
// kernel has left, sorted. A family whose chain is missing, is not hooked
// into INPUT or lacks the rule matching a set contributes nothing for it:
// those entries drop nothing (and the next Block repairs what is missing).
func (s *IPSet) Blocked(ctx context.Context) ([]Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ipt.mu.Lock()
	defer s.ipt.mu.Unlock()
	var out []Entry
	for _, fam := range s.ipt.families() {
		matched, err := s.matchedSets(ctx, fam)
		if err != nil {
			return nil, err
		}
		addrs, nets := s.setsOf(fam)
		for _, set := range []string{addrs, nets} {
			if !matched[set] {
				s.checked = false
				continue
			}
			es, ok, err := s.list(set)
			if err != nil {
				return nil, err
			}
			if !ok {
				s.checked = false
				continue
			}
			out = append(out, es...)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return ComparePrefix(a.Prefix, b.Prefix) })
	return out, nil
}

// matchedSets returns the sets whose rule our chain of fam holds, none
// when the chain is missing or INPUT does not jump to it.
func (s *IPSet) matchedSets(ctx context.Context, fam *family) (map[string]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, newError("blocked", netip.Prefix{}, "", err)
	}
	exists, err := fam.t.ChainExists(tableFilter, s.ipt.chain)
	if err != nil {
		return nil, newError("blocked", netip.Prefix{}, s.ipt.step("check chain", fam), err)
	}
	if !exists {
		return nil, nil
	}
	n, err := s.ipt.countJumps(ctx, "blocked", fam)
	if err != nil || n == 0 {
		return nil, err
	}
	lines, err := fam.t.List(tableFilter, s.ipt.chain)
	if err != nil {
		return nil, newError("blocked", netip.Prefix{}, s.ipt.step("list", fam), err)
	}
	out := map[string]bool{}
	for _, l := range lines {
		if set := matchedSet(s.ipt.chain, l); set != "" {
			out[set] = true
		}
	}
	return out, nil
}

// list returns the entries of set; ok is false when the set does not
// exist.
func (s *IPSet) list(set string) ([]Entry, bool, error) {
	res, err := s.t.IpsetList(set)
	if isNoSet(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, setError("blocked", netip.Prefix{}, "list set "+set, err)
	}
	out := make([]Entry, 0, len(res.Entries))
	for _, e := range res.Entries {
		a, ok := netip.AddrFromSlice(e.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		bits := a.BitLen()
		if e.CIDR != 0 {
			bits = int(e.CIDR)
		}
		en := Entry{Prefix: netip.PrefixFrom(a, bits).Masked()}
		if e.Timeout != nil {
			en.Timeout = time.Duration(*e.Timeout) * time.Second
		}
		out = append(out, en)
	}
	return out, true, nil
}

// Rules returns the prefixes in our sets and in the DROP rules of our
// chain (a guard without sets leaves those), sorted, whether or not INPUT
// jumps to the chain. It changes nothing.
func (s *IPSet) Rules(ctx context.Context) ([]netip.Prefix, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ipt.mu.Lock()
	defer s.ipt.mu.Unlock()
	var out []netip.Prefix
	for _, fam := range s.ipt.families() {
		rules, _, err := s.ipt.listDrops(ctx, "rules", fam)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			out = append(out, r.prefix)
		}
		addrs, nets := s.setsOf(fam)
		for _, set := range []string{addrs, nets} {
			es, _, err := s.list(set)
			if err != nil {
				return nil, err
			}
			for _, e := range es {
				out = append(out, e.Prefix)
			}
		}
	}
	return sortPrefixes(out), nil
}

// Real is true: the kernel drops the traffic.
func (s *IPSet) Real() bool { return true }

// Teardown removes the jump and our chain (as IPTables does), then
// destroys our sets, which nothing references any more. Missing pieces
// count as success.
func (s *IPSet) Teardown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ipt.Teardown(ctx); err != nil {
		return err
	}
	var errs []error
	for _, set := range s.familySets(false) {
		if err := s.t.IpsetDestroy(set); err != nil && !isNoSet(err) {
			errs = append(errs, setError("teardown", netip.Prefix{}, "destroy set "+set, err))
			continue
		}
	}
	s.checked = false
	s.log.Info().Strs("sets", s.familySets(false)).Msg("address sets removed")
	return errors.Join(errs...)
}

// isNoSet reports whether err says the set does not exist.
func isNoSet(err error) bool {
	return errors.Is(err, syscall.ENOENT)
}

// isNotInSet reports whether err says the entry is not in the set.
func isNotInSet(err error) bool {
	var e nl.IPSetError
	return errors.As(err, &e) && e == nl.IPSET_ERR_EXIST
}

// setError wraps an error of a netlink ipset request, classifying it: a
// busy kernel (EAGAIN, EBUSY, ENOBUFS, a timeout) is worth a retry; a
// refusal (EPERM, a set full or of another type) is not.
func setError(op string, p netip.Prefix, step string, err error) error {
	temp := false
	var ipe nl.IPSetError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	case errors.As(err, &ipe):
		temp = ipe == nl.IPSET_ERR_BUSY
	case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EBUSY), errors.Is(err, syscall.ENOBUFS),
		errors.Is(err, syscall.EINTR), errors.Is(err, syscall.ETIMEDOUT):
		temp = true
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPROTONOSUPPORT),
		errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.EINVAL):
	default:
		var errno syscall.Errno
		temp = !errors.As(err, &errno) // not from the kernel: the socket, a short reply
	}
	return &Error{Op: op, Prefix: p, Step: step, Err: err, temporary: temp}
}
