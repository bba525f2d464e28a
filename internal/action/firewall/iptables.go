package firewall

import (
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
	// destination is addr and returns how many it deleted.
	DeleteFlows(ctx context.Context, addr netip.Addr) (int, error)
}

// Options configures NewIPTables.
type Options struct {
	// Chain is our chain's name; default DefaultChain ("ASTGUARD").
	Chain string
	// DisableIPv6 leaves ip6tables alone. By default IPv6 is managed too;
	// if ip6tables is unusable NewIPTables logs it and goes on IPv4-only.
	DisableIPv6 bool
	// DisableConntrack skips deleting conntrack entries in Block.
	DisableConntrack bool
	// KeepRulesOnSetup makes Setup keep the rules a previous run left in
	// our chain instead of flushing them, so a restarting daemon never has
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
	ct    flowTable

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
	return newIPTables(opts, openTable, ct)
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
	}
	if !opts.DisableConntrack {
		f.ct = ct
	}

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
	f.log.Debug().Str("chain", f.chain).Bool("ipv6", f.v6 != nil).Bool("conntrack", f.ct != nil).
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
		return nil, newError("init", netip.Addr{}, "list "+chainInput+" ("+fam.name+")", err)
	}
	return fam, nil
}

func (f *IPTables) families() []*family {
	if f.v6 == nil {
		return []*family{f.v4}
	}
	return []*family{f.v4, f.v6}
}

func (f *IPTables) familyOf(addr netip.Addr) *family {
	if addr.Is4() {
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
			return newError("setup", netip.Addr{}, "", err)
		}
		if err := fam.t.ClearChain(tableFilter, f.chain); err != nil {
			return newError("setup", netip.Addr{}, f.step("flush", fam), err)
		}
		f.log.Info().Str("chain", f.chain).Str("family", fam.name).Msg("flushed leftover rules")
	}
	return f.ensureJump(ctx, "setup", fam)
}

// ensureChain creates our chain if it is missing; it reports whether the
// chain was there already.
func (f *IPTables) ensureChain(ctx context.Context, op string, fam *family) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, newError(op, netip.Addr{}, "", err)
	}
	exists, err := fam.t.ChainExists(tableFilter, f.chain)
	if err != nil {
		return false, newError(op, netip.Addr{}, f.step("check chain", fam), err)
	}
	if exists {
		return true, nil
	}
	if err := fam.t.NewChain(tableFilter, f.chain); err != nil {
		if exitStatus(err) == 1 && strings.Contains(err.Error(), "already exists") {
			return true, nil // created meanwhile
		}
		return false, newError(op, netip.Addr{}, f.step("create chain", fam), err)
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
			return newError(op, netip.Addr{}, "insert jump to "+f.chain+" at the top of "+chainInput+" ("+fam.name+")", err)
		}
		f.log.Info().Str("chain", f.chain).Str("family", fam.name).Msg("jump inserted at the top of INPUT")
		return nil
	}
	for ; n > 1; n-- {
		if err := ctx.Err(); err != nil {
			return newError(op, netip.Addr{}, "", err)
		}
		if err := fam.t.Delete(tableFilter, chainInput, "-j", f.chain); err != nil && !isNotExist(err) {
			return newError(op, netip.Addr{}, "delete duplicate jump to "+f.chain+" ("+fam.name+")", err)
		}
		f.log.Warn().Str("chain", f.chain).Str("family", fam.name).Msg("duplicate jump removed from INPUT")
	}
	return nil
}

func (f *IPTables) countJumps(ctx context.Context, op string, fam *family) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, newError(op, netip.Addr{}, "", err)
	}
	lines, err := fam.t.List(tableFilter, chainInput)
	if err != nil {
		return 0, newError(op, netip.Addr{}, "list "+chainInput+" ("+fam.name+")", err)
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
func (f *IPTables) listDrops(ctx context.Context, op string, addr netip.Addr, fam *family) ([]dropRule, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, newError(op, addr, "", err)
	}
	// Check first: iptables-nft reports a missing chain in -S with a
	// misleading "incompatible" message.
	exists, err := fam.t.ChainExists(tableFilter, f.chain)
	if err != nil {
		return nil, false, newError(op, addr, f.step("check chain", fam), err)
	}
	if !exists {
		return nil, false, nil
	}
	lines, err := fam.t.List(tableFilter, f.chain)
	if err != nil {
		if isNotExist(err) {
			return nil, false, nil
		}
		return nil, false, newError(op, addr, f.step("list", fam), err)
	}
	var out []dropRule
	for _, l := range lines {
		if r, ok := parseDropRule(f.chain, l); ok {
			out = append(out, r)
		}
	}
	return out, true, nil
}

// Block drops traffic from addr: it makes sure our chain and its jump exist
// (someone may have deleted them), appends the DROP rule unless addr has one
// already, then deletes addr's conntrack entries.
//
// If only the conntrack step fails the rule stays in place and the error
// wraps ErrConntrack (and ErrTemporary): callers should log it, not treat the
// block as failed. Block is idempotent, so retrying repeats the deletion.
func (f *IPTables) Block(ctx context.Context, addr netip.Addr, comment string) error {
	a, err := NormalizeAddr(addr)
	if err != nil {
		return &Error{Op: "block", Err: err}
	}
	fam := f.familyOf(a)
	if fam == nil {
		return &Error{Op: "block", Addr: a, Err: fmt.Errorf("%w: ip6tables is not managed (unusable or disabled)", ErrFamilyUnavailable)}
	}
	comment = SanitizeComment(comment)

	if err := f.addDrop(ctx, fam, a, comment); err != nil {
		return err
	}
	if f.ct == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return &Error{Op: "block", Addr: a, Step: "delete conntrack entries", Err: fmt.Errorf("%w: %w", ErrConntrack, err)}
	}
	n, err := f.ct.DeleteFlows(ctx, a)
	if err != nil {
		return &Error{Op: "block", Addr: a, Step: "delete conntrack entries", Err: fmt.Errorf("%w: %w", ErrConntrack, err), temporary: true}
	}
	if n > 0 {
		f.log.Info().Str("ip", a.String()).Int("flows", n).Msg("conntrack entries deleted")
	}
	return nil
}

func (f *IPTables) addDrop(ctx context.Context, fam *family, a netip.Addr, comment string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.ensureChain(ctx, "block", fam); err != nil {
		return withAddr(err, a)
	}
	if err := f.ensureJump(ctx, "block", fam); err != nil {
		return withAddr(err, a)
	}
	rules, _, err := f.listDrops(ctx, "block", a, fam)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.addr == a {
			return nil
		}
	}
	if err := ctx.Err(); err != nil {
		return newError("block", a, "", err)
	}
	if err := fam.t.Append(tableFilter, f.chain, dropSpec(a, comment)...); err != nil {
		return newError("block", a, f.step("append DROP rule to", fam), err)
	}
	f.log.Info().Str("ip", a.String()).Str("chain", f.chain).Str("comment", comment).Msg("address blocked")
	return nil
}

// Unblock deletes every DROP rule for addr from our chain. A missing rule or
// chain is success; so is an IPv6 address while IPv6 is not managed.
func (f *IPTables) Unblock(ctx context.Context, addr netip.Addr) error {
	a, err := NormalizeAddr(addr)
	if err != nil {
		return &Error{Op: "unblock", Err: err}
	}
	fam := f.familyOf(a)
	if fam == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, _, err := f.listDrops(ctx, "unblock", a, fam)
	if err != nil {
		return err
	}
	removed := 0
	for _, r := range rules {
		if r.addr != a {
			continue
		}
		if err := ctx.Err(); err != nil {
			return newError("unblock", a, "", err)
		}
		if err := fam.t.Delete(tableFilter, f.chain, r.spec...); err != nil {
			if isNotExist(err) {
				continue
			}
			return newError("unblock", a, f.step("delete DROP rule from", fam), err)
		}
		removed++
	}
	if removed > 0 {
		f.log.Info().Str("ip", a.String()).Str("chain", f.chain).Msg("address unblocked")
	}
	return nil
}

// Blocked returns the addresses with a DROP rule in our chain, sorted. A
// family whose chain is missing, or not hooked into INPUT, contributes none:
// its rules drop nothing.
func (f *IPTables) Blocked(ctx context.Context) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.Addr
	for _, fam := range f.families() {
		rules, exists, err := f.listDrops(ctx, "blocked", netip.Addr{}, fam)
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
			out = append(out, r.addr)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out), nil
}

// Rules returns the addresses with a DROP rule in our chain, sorted,
// whether or not INPUT jumps to it. It changes nothing.
func (f *IPTables) Rules(ctx context.Context) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.Addr
	for _, fam := range f.families() {
		rules, _, err := f.listDrops(ctx, "rules", netip.Addr{}, fam)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			out = append(out, r.addr)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out), nil
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
			return newError("teardown", netip.Addr{}, "", err)
		}
		if err := fam.t.Delete(tableFilter, chainInput, "-j", f.chain); err != nil {
			if isNotExist(err) {
				break
			}
			return newError("teardown", netip.Addr{}, "delete jump to "+f.chain+" from "+chainInput+" ("+fam.name+")", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return newError("teardown", netip.Addr{}, "", err)
	}
	exists, err := fam.t.ChainExists(tableFilter, f.chain)
	if err != nil {
		return newError("teardown", netip.Addr{}, f.step("check chain", fam), err)
	}
	if !exists {
		return nil
	}
	if err := fam.t.ClearChain(tableFilter, f.chain); err != nil && !isNotExist(err) {
		return newError("teardown", netip.Addr{}, f.step("flush", fam), err)
	}
	if err := fam.t.DeleteChain(tableFilter, f.chain); err != nil && !isNotExist(err) {
		return newError("teardown", netip.Addr{}, f.step("delete chain", fam), err)
	}
	f.log.Info().Str("chain", f.chain).Str("family", fam.name).Msg("chain removed")
	return nil
}

func (f *IPTables) step(what string, fam *family) string {
	return what + " " + f.chain + " (" + fam.name + ")"
}

// newError wraps err from step, classifying it.
func newError(op string, addr netip.Addr, step string, err error) error {
	return &Error{Op: op, Addr: addr, Step: step, Err: err, temporary: temporary(err)}
}

func withAddr(err error, a netip.Addr) error {
	var e *Error
	if errors.As(err, &e) && !e.Addr.IsValid() {
		e.Addr = a
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
