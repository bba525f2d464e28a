package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/rs/zerolog"
)

const (
	tableFilter = "filter"
	chainInput  = "INPUT"
)

// ruleTable lists the go-iptables methods IPTables calls, so tests can fake
// them and fail them on purpose.
type ruleTable interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	List(table, chain string) ([]string, error)
}

var _ ruleTable = (*iptables.IPTables)(nil)

// flowTable deletes conntrack entries.
type flowTable interface {
	// DeleteFlows deletes the entries whose original source or reply
	// destination is in one of prefixes and returns how many it deleted.
	DeleteFlows(ctx context.Context, prefixes []netip.Prefix) (int, error)
}

// restoreFunc feeds input to iptables-restore --noflush (v6:
// ip6tables-restore) of the same backend as the iptables command.
type restoreFunc func(ctx context.Context, v6 bool, input []byte) error

// Options configures New, NewIPSet and NewIPTables.
type Options struct {
	// Match says how banned addresses are matched; New reads it (default
	// MatchAuto).
	Match Match
	// Chain is our chain's name; default DefaultChain ("ASTGUARD"). The
	// sets are named after it (SetNames).
	Chain string
	// DisableIPv6 leaves ip6tables alone. By default IPv6 is managed too;
	// if ip6tables is unusable NewIPTables logs it and goes on IPv4-only.
	DisableIPv6 bool
	// DisableConntrack skips deleting conntrack entries in Block.
	DisableConntrack bool
	// KeepRulesOnSetup makes Setup keep the rules (and set entries) a
	// previous run left instead of flushing them, so a restarting daemon never has
	// a moment without its blocks; the caller then removes the rules it no
	// longer wants (bans.Manager does this at Start).
	KeepRulesOnSetup bool
	// LockWait is how long an iptables call waits for the xtables lock
	// (iptables --wait); default 5s. A timeout is a temporary error.
	LockWait time.Duration
	// Logger gets the component's log lines.
	Logger zerolog.Logger
}

// family is one of iptables/ip6tables.
type family struct {
	name string // "iptables" or "ip6tables"
	v6   bool
	t    ruleTable
}

// IPTables is the Firewall on iptables and ip6tables (legacy or nft
// backend, whichever the iptables command is). Safe for concurrent use.
//
// go-iptables runs commands without a context: ctx is checked before every
// command, and a command waits at most LockWait for the xtables lock.
type IPTables struct {
	log   zerolog.Logger
	chain string
	keep  bool
	v4    *family
	v6    *family // nil when IPv6 is not managed
	cut   *flowCutter
	// restore applies a batch; sets are the names of IPSet's sets, whose
	// rules Setup removes (they are IPSet's, not ours).
	restore restoreFunc
	sets    []string

	mu sync.Mutex // serializes rule changes of this process
}

var _ Firewall = (*IPTables)(nil)

// tableFactory opens iptables (v6 false) or ip6tables (v6 true).
type tableFactory func(v6 bool, lockWait time.Duration) (ruleTable, error)

func openTable(v6 bool, lockWait time.Duration) (ruleTable, error) {
	proto := iptables.ProtocolIPv4
	if v6 {
		proto = iptables.ProtocolIPv6
	}
	secs := max(int((lockWait+time.Second-1)/time.Second), 1)
	return iptables.New(iptables.IPFamily(proto), iptables.Timeout(secs))
}

// NewIPTables finds iptables (and ip6tables), checks that they work (this
// needs CAP_NET_ADMIN) and returns the firewall. It changes no rules.
//
// A missing iptables binary is an error wrapping ErrNotInstalled; an
// unusable ip6tables only disables IPv6, with a warning.
func NewIPTables(opts Options) (*IPTables, error) {
	var ct flowTable
	if !opts.DisableConntrack {
		ct = netlinkConntrack{}
	}
	f, err := newIPTables(opts, openTable, ct)
	if err != nil {
		return nil, err
	}
	f.restore = runRestore
	return f, nil
}

func newIPTables(opts Options, open tableFactory, ct flowTable) (*IPTables, error) {
	if opts.Chain == "" {
		opts.Chain = DefaultChain
	}
	if err := ValidChain(opts.Chain); err != nil {
		return nil, &Error{Op: "init", Err: err}
	}
	if opts.LockWait <= 0 {
		opts.LockWait = 5 * time.Second
	}
	f := &IPTables{
		log:   opts.Logger.With().Str("component", "firewall").Logger(),
		chain: opts.Chain,
		keep:  opts.KeepRulesOnSetup,
		sets:  SetNames(opts.Chain).all(),
	}
	if opts.DisableConntrack {
		ct = nil
	}
	f.cut = newFlowCutter(ct, f.log)

	v4, err := openFamily(open, false, opts.LockWait)
	if err != nil {
		return nil, err
	}
	f.v4 = v4
	if !opts.DisableIPv6 {
		v6, err := openFamily(open, true, opts.LockWait)
		if err != nil {
			f.log.Warn().Err(err).Msg("ip6tables unusable, managing IPv4 only")
		} else {
			f.v6 = v6
		}
	}
	f.log.Debug().Str("chain", f.chain).Bool("ipv6", f.v6 != nil).Bool("conntrack", ct != nil).
		Msg("firewall ready")
	return f, nil
}

func openFamily(open tableFactory, v6 bool, lockWait time.Duration) (*family, error) {
	fam := &family{name: "iptables", v6: v6}
	if v6 {
		fam.name = "ip6tables"
	}
	t, err := open(v6, lockWait)
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("%w: %w", ErrNotInstalled, err)
		}
		return nil, &Error{Op: "init", Step: "find " + fam.name, Err: err}
	}
	fam.t = t
	// A harmless read shows whether the command works here (root or
	// CAP_NET_ADMIN, kernel support, a matching backend).
	if _, err := t.ChainExists(tableFilter, chainInput); err != nil {
		return nil, newError("init", netip.Prefix{}, "list "+chainInput+" ("+fam.name+")", err)
	}
	return fam, nil
}

func (f *IPTables) families() []*family {
	if f.v6 == nil {
		return []*family{f.v4}
	}
	return []*family{f.v4, f.v6}
}

func (f *IPTables) familyOf(p netip.Prefix) *family {
	if p.Addr().Is4() {
		return f.v4
	}
	return f.v6
}

// Setup creates our chain in each family if it is missing, flushes it
// (unless Options.KeepRulesOnSetup) and makes sure INPUT holds exactly one
// jump to it, inserting it at position 1 when there is none. A jump that
// is already there stays where it is.
func (f *IPTables) Setup(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, fam := range f.families() {
		if err := f.setupFamily(ctx, fam); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (f *IPTables) setupFamily(ctx context.Context, fam *family) error {
	exists, err := f.ensureChain(ctx, "setup", fam)
	if err != nil {
		return err
	}
	if exists && !f.keep {
		if err := ctx.Err(); err != nil {
			return newError("setup", netip.Prefix{}, "", err)
		}
		if err := fam.t.ClearChain(tableFilter, f.chain); err != nil {
			return newError("setup", netip.Prefix{}, f.step("flush", fam), err)
		}
		f.log.Info().Str("chain", f.chain).Str("family", fam.name).Msg("flushed leftover rules")
	}
	if exists && f.keep {
		if err := f.removeSetRules(ctx, fam); err != nil {
			return err
		}
	}
	return f.ensureJump(ctx, "setup", fam)
}

// removeSetRules deletes from our chain the rules matching our sets, which
// a guard with kernel address sets left: this firewall keeps one rule per
// ban, and a set nobody updates would go on dropping what was unbanned.
// The bans are put back as rules right after Setup (bans.Manager).
func (f *IPTables) removeSetRules(ctx context.Context, fam *family) error {
	lines, err := fam.t.List(tableFilter, f.chain)
	if err != nil {
		return newError("setup", netip.Prefix{}, f.step("list", fam), err)
	}
	for _, l := range lines {
		set := matchedSet(f.chain, l)
		if set == "" || !slices.Contains(f.sets, set) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return newError("setup", netip.Prefix{}, "", err)
		}
		if err := fam.t.Delete(tableFilter, f.chain, setSpec(set)...); err != nil && !isNotExist(err) {
			return newError("setup", netip.Prefix{}, "delete the rule matching set "+set+" from "+f.chain+" ("+fam.name+")", err)
		}
		f.log.Warn().Str("chain", f.chain).Str("set", set).Str("family", fam.name).
			Msg("rule matching an address set of an earlier run removed: this firewall keeps one rule per ban; the bans are put back as rules (destroy the set with ipset destroy)")
	}
	return nil
}

// ensureChain creates our chain if it is missing; it reports whether the
// chain was there already.
func (f *IPTables) ensureChain(ctx context.Context, op string, fam *family) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, newError(op, netip.Prefix{}, "", err)
	}
	exists, err := fam.t.ChainExists(tableFilter, f.chain)
	if err != nil {
		return false, newError(op, netip.Prefix{}, f.step("check chain", fam), err)
	}
	if exists {
		return true, nil
	}
	if err := fam.t.NewChain(tableFilter, f.chain); err != nil {
		if exitStatus(err) == 1 && strings.Contains(err.Error(), "already exists") {
			return true, nil // created meanwhile
		}
		return false, newError(op, netip.Prefix{}, f.step("create chain", fam), err)
	}
	f.log.Info().Str("chain", f.chain).Str("family", fam.name).Msg("chain created")
	return false, nil
}

// ensureJump makes INPUT hold exactly one `-j CHAIN`.
func (f *IPTables) ensureJump(ctx context.Context, op string, fam *family) error {
	n, err := f.countJumps(ctx, op, fam)
	if err != nil {
		return err
	}
	if n == 0 {
		if err := fam.t.Insert(tableFilter, chainInput, 1, "-j", f.chain); err != nil {
			return newError(op, netip.Prefix{}, "insert jump to "+f.chain+" at the top of "+chainInput+" ("+fam.name+")", err)
		}
		f.log.Info().Str("chain", f.chain).Str("family", fam.name).Msg("jump inserted at the top of INPUT")
		return nil
	}
	for ; n > 1; n-- {
		if err := ctx.Err(); err != nil {
			return newError(op, netip.Prefix{}, "", err)
		}
		if err := fam.t.Delete(tableFilter, chainInput, "-j", f.chain); err != nil && !isNotExist(err) {
			return newError(op, netip.Prefix{}, "delete duplicate jump to "+f.chain+" ("+fam.name+")", err)
		}
		f.log.Warn().Str("chain", f.chain).Str("family", fam.name).Msg("duplicate jump removed from INPUT")
	}
	return nil
}

func (f *IPTables) countJumps(ctx context.Context, op string, fam *family) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, newError(op, netip.Prefix{}, "", err)
	}
	lines, err := fam.t.List(tableFilter, chainInput)
	if err != nil {
		return 0, newError(op, netip.Prefix{}, "list "+chainInput+" ("+fam.name+")", err)
	}
	n := 0
	for _, l := range lines {
		if isJump(chainInput, f.chain, l) {
			n++
		}
	}
	return n, nil
}

// listDrops returns the DROP rules in our chain; a missing chain has none.
func (f *IPTables) listDrops(ctx context.Context, op string, fam *family) ([]dropRule, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, newError(op, netip.Prefix{}, "", err)
	}
	// Check first: iptables-nft reports a missing chain in -S with a
	// misleading "incompatible" message.
	exists, err := fam.t.ChainExists(tableFilter, f.chain)
	if err != nil {
		return nil, false, newError(op, netip.Prefix{}, f.step("check chain", fam), err)
	}
	if !exists {
		return nil, false, nil
	}
	lines, err := fam.t.List(tableFilter, f.chain)
	if err != nil {
		if isNotExist(err) {
			return nil, false, nil
		}
		return nil, false, newError(op, netip.Prefix{}, f.step("list", fam), err)
	}
	var out []dropRule
	for _, l := range lines {
		if r, ok := parseDropRule(f.chain, l); ok {
			out = append(out, r)
		}
	}
	return out, true, nil
}

// checkEntries normalizes the entries of a Block and groups them by
// family, the last of one prefix winning. An invalid prefix fails the
// whole batch before anything changes.
func (f *IPTables) checkEntries(entries []Entry) (v4, v6 []Entry, err error) {
	seen := make(map[netip.Prefix]int, len(entries))
	var all []Entry
	for _, e := range entries {
		p, err := NormalizePrefix(e.Prefix)
		if err != nil {
			return nil, nil, &Error{Op: "block", Err: err}
		}
		if f.familyOf(p) == nil {
			return nil, nil, &Error{Op: "block", Prefix: p, Err: fmt.Errorf("%w: ip6tables is not managed (unusable or disabled)", ErrFamilyUnavailable)}
		}
		e.Prefix, e.Comment = p, SanitizeComment(e.Comment)
		if i, ok := seen[p]; ok {
			all[i] = e
			continue
		}
		seen[p] = len(all)
		all = append(all, e)
	}
	for _, e := range all {
		if e.Prefix.Addr().Is4() {
			v4 = append(v4, e)
		} else {
			v6 = append(v6, e)
		}
	}
	return v4, v6, nil
}

// Block drops traffic from each entry's prefix: per family it makes sure
// our chain and its jump exist (someone may have deleted them), lists the
// chain once and adds a DROP rule for each prefix that has none: one
// `iptables -A` for a single rule, one `iptables-restore --noflush` for
// more. Entry timeouts are not used: a rule stays until Unblock. Right
// after, in the background, the conntrack entries of all the prefixes are
// deleted (see flowCutter).
func (f *IPTables) Block(ctx context.Context, entries ...Entry) error {
	v4, v6, err := f.checkEntries(entries)
	if err != nil {
		return err
	}
	for _, batch := range [][]Entry{v4, v6} {
		if len(batch) == 0 {
			continue
		}
		if err := f.addDrops(ctx, f.familyOf(batch[0].Prefix), batch); err != nil {
			return err
		}
	}
	f.cut.cut(append(v4, v6...))
	return nil
}

func (f *IPTables) addDrops(ctx context.Context, fam *family, batch []Entry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var one netip.Prefix
	if len(batch) == 1 {
		one = batch[0].Prefix
	}
	if _, err := f.ensureChain(ctx, "block", fam); err != nil {
		return withPrefix(err, one)
	}
	if err := f.ensureJump(ctx, "block", fam); err != nil {
		return withPrefix(err, one)
	}
	rules, _, err := f.listDrops(ctx, "block", fam)
	if err != nil {
		return withPrefix(err, one)
	}
	have := make(map[netip.Prefix]bool, len(rules))
	for _, r := range rules {
		have[r.prefix] = true
	}
	var missing []Entry
	for _, e := range batch {
		if !have[e.Prefix] {
			missing = append(missing, e)
		}
	}
	if err := ctx.Err(); err != nil {
		return newError("block", one, "", err)
	}
	switch {
	case len(missing) == 0:
		return nil
	case len(missing) == 1:
		e := missing[0]
		if err := fam.t.Append(tableFilter, f.chain, dropSpec(e.Prefix, e.Comment)...); err != nil {
			return newError("block", e.Prefix, f.step("append DROP rule to", fam), err)
		}
		f.log.Info().Str("ip", PrefixString(e.Prefix)).Str("chain", f.chain).Str("comment", e.Comment).Msg("address blocked")
		return nil
	}
	var in bytes.Buffer
	in.WriteString("*filter\n")
	for _, e := range missing {
		in.WriteString("-A " + f.chain + " " + quoteRule(dropSpec(e.Prefix, e.Comment)) + "\n")
	}
	in.WriteString("COMMIT\n")
	if err := f.restore(ctx, fam.v6, in.Bytes()); err != nil {
		return newError("block", one, fmt.Sprintf("append %d DROP rules to %s (%s-restore)", len(missing), f.chain, fam.name), err)
	}
	f.log.Info().Int("count", len(missing)).Str("chain", f.chain).Str("family", fam.name).Msg("addresses blocked")
	return nil
}

// Unblock deletes every DROP rule for each of prefixes from our chain: one
// `iptables -D` for one rule, one `iptables-restore --noflush` for more. A
// missing rule or chain is success; so is an IPv6 prefix while IPv6 is not
// managed.
func (f *IPTables) Unblock(ctx context.Context, prefixes ...netip.Prefix) error {
	want := map[*family]map[netip.Prefix]bool{}
	var one netip.Prefix
	for _, p := range prefixes {
		n, err := NormalizePrefix(p)
		if err != nil {
			return &Error{Op: "unblock", Err: err}
		}
		one = n
		fam := f.familyOf(n)
		if fam == nil {
			continue
		}
		if want[fam] == nil {
			want[fam] = map[netip.Prefix]bool{}
		}
		want[fam][n] = true
	}
	if len(prefixes) != 1 {
		one = netip.Prefix{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fam := range f.families() {
		if len(want[fam]) == 0 {
			continue
		}
		if err := f.deleteDrops(ctx, fam, want[fam], one); err != nil {
			return err
		}
	}
	return nil
}

func (f *IPTables) deleteDrops(ctx context.Context, fam *family, want map[netip.Prefix]bool, one netip.Prefix) error {
	rules, _, err := f.listDrops(ctx, "unblock", fam)
	if err != nil {
		return withPrefix(err, one)
	}
	var doomed []dropRule
	for _, r := range rules {
		if want[r.prefix] {
			doomed = append(doomed, r)
		}
	}
	if err := ctx.Err(); err != nil {
		return newError("unblock", one, "", err)
	}
	switch {
	case len(doomed) == 0:
		return nil
	case len(doomed) == 1:
		r := doomed[0]
		if err := fam.t.Delete(tableFilter, f.chain, r.spec...); err != nil {
			if isNotExist(err) {
				return nil
			}
			return newError("unblock", r.prefix, f.step("delete DROP rule from", fam), err)
		}
		f.log.Info().Str("ip", PrefixString(r.prefix)).Str("chain", f.chain).Msg("address unblocked")
		return nil
	}
	var in bytes.Buffer
	in.WriteString("*filter\n")
	for _, r := range doomed {
		in.WriteString("-D " + f.chain + " " + quoteRule(r.spec) + "\n")
	}
	in.WriteString("COMMIT\n")
	if err := f.restore(ctx, fam.v6, in.Bytes()); err != nil {
		return newError("unblock", one, fmt.Sprintf("delete %d DROP rules from %s (%s-restore)", len(doomed), f.chain, fam.name), err)
	}
	f.log.Info().Int("count", len(doomed)).Str("chain", f.chain).Str("family", fam.name).Msg("addresses unblocked")
	return nil
}

// Blocked returns the prefixes with a DROP rule in our chain, sorted. A
// family whose chain is missing, or not hooked into INPUT, contributes none:
// its rules drop nothing.
func (f *IPTables) Blocked(ctx context.Context) ([]Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.Prefix
	for _, fam := range f.families() {
		rules, exists, err := f.listDrops(ctx, "blocked", fam)
		if err != nil {
			return nil, err
		}
		if !exists || len(rules) == 0 {
			continue
		}
		n, err := f.countJumps(ctx, "blocked", fam)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			f.log.Debug().Str("chain", f.chain).Str("family", fam.name).Msg("chain not hooked into INPUT")
			continue
		}
		for _, r := range rules {
			out = append(out, r.prefix)
		}
	}
	return entriesOf(sortPrefixes(out)), nil
}

// Rules returns the prefixes with a DROP rule in our chain, sorted,
// whether or not INPUT jumps to it. It changes nothing.
func (f *IPTables) Rules(ctx context.Context) ([]netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.Prefix
	for _, fam := range f.families() {
		rules, _, err := f.listDrops(ctx, "rules", fam)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			out = append(out, r.prefix)
		}
	}
	return sortPrefixes(out), nil
}

// ComparePrefix orders prefixes by address, then length.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// sortPrefixes sorts ps and drops duplicates.
func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, ComparePrefix)
	return slices.Compact(ps)
}

// entriesOf returns entries of ps without timeouts.
func entriesOf(ps []netip.Prefix) []Entry {
	out := make([]Entry, len(ps))
	for i, p := range ps {
		out[i] = Entry{Prefix: p}
	}
	return out
}

// Real is true: iptables drops the traffic.
func (f *IPTables) Real() bool { return true }

// Teardown removes every jump to our chain from INPUT, then flushes and
// deletes the chain, in each family. Missing pieces count as success.
func (f *IPTables) Teardown(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, fam := range f.families() {
		if err := f.teardownFamily(ctx, fam); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (f *IPTables) teardownFamily(ctx context.Context, fam *family) error {
	n, err := f.countJumps(ctx, "teardown", fam)
	if err != nil {
		return err
	}
	for ; n > 0; n-- {
		if err := ctx.Err(); err != nil {
			return newError("teardown", netip.Prefix{}, "", err)
		}
		if err := fam.t.Delete(tableFilter, chainInput, "-j", f.chain); err != nil {
			if isNotExist(err) {
				break
			}
			return newError("teardown", netip.Prefix{}, "delete jump to "+f.chain+" from "+chainInput+" ("+fam.name+")", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return newError("teardown", netip.Prefix{}, "", err)
	}
	exists, err := fam.t.ChainExists(tableFilter, f.chain)
	if err != nil {
		return newError("teardown", netip.Prefix{}, f.step("check chain", fam), err)
	}
	if !exists {
		return nil
	}
	if err := fam.t.ClearChain(tableFilter, f.chain); err != nil && !isNotExist(err) {
		return newError("teardown", netip.Prefix{}, f.step("flush", fam), err)
	}
	if err := fam.t.DeleteChain(tableFilter, f.chain); err != nil && !isNotExist(err) {
		return newError("teardown", netip.Prefix{}, f.step("delete chain", fam), err)
	}
	f.log.Info().Str("chain", f.chain).Str("family", fam.name).Msg("chain removed")
	return nil
}

func (f *IPTables) step(what string, fam *family) string {
	return what + " " + f.chain + " (" + fam.name + ")"
}

// newError wraps err from step, classifying it.
func newError(op string, p netip.Prefix, step string, err error) error {
	return &Error{Op: op, Prefix: p, Step: step, Err: err, temporary: temporary(err)}
}

func withPrefix(err error, p netip.Prefix) error {
	var e *Error
	if p.IsValid() && errors.As(err, &e) && !e.Prefix.IsValid() {
		e.Prefix = p
	}
	return err
}

// exitStatus returns the exit status of a failed iptables command, or -1.
func exitStatus(err error) int {
	var ee interface{ ExitStatus() int }
	if errors.As(err, &ee) {
		return ee.ExitStatus()
	}
	return -1
}

func isNotExist(err error) bool {
	var ne interface{ IsNotExist() bool }
	return errors.As(err, &ne) && ne.IsNotExist()
}

// temporary classifies an error of an iptables command.
func temporary(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if status := exitStatus(err); status >= 0 {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "Permission denied"), strings.Contains(msg, "Operation not permitted"),
			strings.Contains(msg, "you must be root"):
			return false
		case strings.Contains(msg, "xtables lock"), strings.Contains(msg, "temporarily unavailable"),
			strings.Contains(msg, "try again"):
			return true
		}
		return status == 4 // RESOURCE_PROBLEM: lock, EAGAIN, busy
	}
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return false
	}
	return true // the command could not be started: fork/exec trouble
}
