// Package bans owns the guard's address bans: it records each ban in a
// state file before it asks the firewall to drop the address, expires bans
// on time, and keeps the firewall in step with the record (a flushed chain
// is refilled, a crash loses nothing).
//
// The daemon creates one Manager, calls Start, runs Run until shutdown and
// then Close. ReadState and UnbanOffline serve `guard bans` and
// `guard unblock` when no daemon runs.
package bans

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
)

// Ban is one banned address.
type Ban struct {
	Addr      netip.Addr `json:"addr"`
	Since     time.Time  `json:"since"`
	Until     time.Time  `json:"until"`               // zero = permanent (never with the defaults)
	Reason    string     `json:"reason"`              // e.g. "auth_failures critical: 5 failed authentications in 1m"
	Extension string     `json:"extension,omitempty"` // e.g. "SIP/200"
}

// Permanent reports whether the ban never expires.
func (b Ban) Permanent() bool { return b.Until.IsZero() }

// expired reports whether the ban is over at now.
func (b Ban) expired(now time.Time) bool { return !b.Until.IsZero() && !b.Until.After(now) }

// comment is what the firewall rule says about the ban.
func (b Ban) comment() string {
	c := "astguard: " + b.Reason
	if b.Extension != "" {
		c += " (" + b.Extension + ")"
	}
	return c
}

// Options configures New.
type Options struct {
	// Firewall applies the bans. Required.
	Firewall firewall.Firewall
	// StatePath is the JSON state file, written atomically with mode 0600.
	// Required. A lock file StatePath+".lock" sits next to it.
	StatePath string
	// Never lists networks that are never blocked: allow-listed networks,
	// the AMI server's address, the guard's own address, loopback.
	Never []netip.Prefix
	// Clock gives the time of bans and expiry; default time.Now. Run waits
	// with the time package, so a fake clock belongs in a testing/synctest
	// bubble (where time.Now is fake too).
	Clock func() time.Time
	// Logger gets the component's log lines.
	Logger zerolog.Logger
	// ReapplyEvery is how often Run checks that the firewall still holds
	// every ban and re-applies missing ones; default 30s.
	ReapplyEvery time.Duration
	// TeardownOnClose makes Close remove the firewall chain. By default
	// Close leaves the rules in place, so a restarting daemon never opens
	// a window; use it for uninstalling.
	TeardownOnClose bool
}

// Errors.
var (
	// ErrProtected refuses a ban of an address in Options.Never.
	ErrProtected = errors.New("address is protected (never blocked)")
	// ErrFirewallUnavailable: Start could not set the firewall up; the
	// manager runs anyway, keeps every ban and re-applies them from Run.
	ErrFirewallUnavailable = errors.New("bans: firewall unavailable, bans kept and retried")
	// ErrNotBanned: Unban of an address that has no ban. The firewall rule
	// is removed anyway, in case one was left behind.
	ErrNotBanned = errors.New("address is not banned")
	// ErrNotStarted: Ban, Unban or Run before Start succeeded.
	ErrNotStarted = errors.New("ban manager not started")
	// ErrClosed: the Manager was closed.
	ErrClosed = errors.New("ban manager closed")
)

const (
	defaultReapplyEvery = 30 * time.Second
	firstRetry          = time.Second
	setNeverTimeout     = 30 * time.Second
)

// Manager owns the bans. Its methods are safe for concurrent use.
//
// Locking: fwMu serializes every change that touches the firewall with the
// state change it follows, so the firewall is never behind a newer state
// for long; mu guards the fields and is never held across a firewall call,
// so List answers while iptables is slow.
type Manager struct {
	fw       firewall.Firewall
	path     string
	clock    func() time.Time
	log      zerolog.Logger
	every    time.Duration
	teardown bool

	fwMu sync.Mutex

	mu        sync.Mutex
	never     []netip.Prefix
	bans      map[netip.Addr]Ban
	started   bool
	closed    bool
	dirty     bool // the state file is behind bans: retry the write
	retrySoon bool // an operation failed: Run should sync within firstRetry
	problem   string
	lock      *stateLock
	runs      sync.WaitGroup

	wake chan struct{} // tells Run that deadlines changed
	stop chan struct{} // closed by Close
}

// New checks opts and returns a Manager. It touches neither the firewall
// nor the state file: Start does.
func New(opts Options) (*Manager, error) {
	if opts.Firewall == nil {
		return nil, errors.New("bans: Options.Firewall is required")
	}
	if opts.StatePath == "" {
		return nil, errors.New("bans: Options.StatePath is required")
	}
	never, err := normalizePrefixes(opts.Never)
	if err != nil {
		return nil, err
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.ReapplyEvery <= 0 {
		opts.ReapplyEvery = defaultReapplyEvery
	}
	return &Manager{
		fw:       opts.Firewall,
		path:     opts.StatePath,
		clock:    opts.Clock,
		log:      opts.Logger.With().Str("component", "bans").Logger(),
		every:    opts.ReapplyEvery,
		teardown: opts.TeardownOnClose,
		never:    never,
		bans:     make(map[netip.Addr]Ban),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}, nil
}

// normalizePrefixes masks the prefixes and turns IPv4-mapped IPv6 prefixes
// (::ffff:10.0.0.0/104) into IPv4 ones, as addresses are unmapped too.
func normalizePrefixes(ps []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("bans: never-blocked network %q is not a valid prefix", p)
		}
		a := p.Addr().WithZone("")
		bits := p.Bits()
		if a.Is4In6() {
			if bits < 96 {
				// Covers more than the mapped range; keep it as IPv6 and
				// add the IPv4 space it covers.
				out = append(out, netip.PrefixFrom(a, bits).Masked(), netip.MustParsePrefix("0.0.0.0/0"))
				continue
			}
			a, bits = a.Unmap(), bits-96
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	return out, nil
}

// normalizeAddr unmaps IPv4-mapped addresses and drops a zone.
func normalizeAddr(addr netip.Addr) (netip.Addr, error) {
	a, err := firewall.NormalizeAddr(addr.WithZone(""))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("bans: %w", err)
	}
	return a, nil
}

func (m *Manager) protectedLocked(a netip.Addr) (netip.Prefix, bool) {
	for _, p := range m.never {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// Start takes the state file's lock, loads it (missing = no bans; corrupt =
// an error naming the file, which is left untouched), drops expired and
// protected bans, calls Firewall.Setup and makes the firewall hold exactly
// the bans: missing rules are added, rules without a ban (expired ones
// included) removed.
//
// The state is read before Setup so that a corrupt file never costs the
// rules still in the kernel. Failing to re-apply a ban is logged and left to
// Run; Start fails only when the state cannot be read or Setup fails. A
// failed Start can be retried.
func (m *Manager) Start(ctx context.Context) error {
	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	m.mu.Lock()
	switch {
	case m.closed:
		m.mu.Unlock()
		return ErrClosed
	case m.started:
		m.mu.Unlock()
		return errors.New("bans: already started")
	}
	m.mu.Unlock()

	lock, err := lockState(m.path)
	if err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	loaded, err := ReadState(m.path)
	if err != nil {
		lock.release()
		return fmt.Errorf("bans: %w", err)
	}
	// A firewall that cannot be set up (iptables missing or refused) must
	// not stop the guard: the bans are kept and Run keeps re-applying them,
	// and the caller is told with ErrFirewallUnavailable.
	setupErr := m.fw.Setup(ctx)

	m.mu.Lock()
	now := m.clock()
	changed := false
	for _, b := range loaded {
		a, err := normalizeAddr(b.Addr)
		if err != nil {
			m.log.Error().Str("ip", b.Addr.String()).Err(err).Msg("invalid ban dropped from state")
			changed = true
			continue
		}
		b.Addr = a
		if b.expired(now) {
			m.log.Info().Str("ip", a.String()).Time("until", b.Until).Msg("ban expired while stopped")
			changed = true
			continue
		}
		if p, ok := m.protectedLocked(a); ok {
			m.log.Warn().Str("ip", a.String()).Str("never", p.String()).Msg("ban lifted: address is protected")
			changed = true
			continue
		}
		if old, dup := m.bans[a]; dup && (old.Permanent() || (!b.Permanent() && old.Until.After(b.Until))) {
			continue // the same address twice (mapped and plain): keep the longer ban
		}
		m.bans[a] = b
	}
	m.lock = lock
	m.started = true
	if changed {
		m.saveLocked()
	}
	n := len(m.bans)
	m.mu.Unlock()

	m.log.Info().Int("bans", n).Str("state", m.path).Msg("bans loaded")
	if setupErr != nil {
		m.mu.Lock()
		m.retrySoon = true
		m.mu.Unlock()
		return fmt.Errorf("%w: %w", ErrFirewallUnavailable, setupErr)
	}
	if !m.syncLocked(ctx, true) {
		m.mu.Lock()
		m.retrySoon = true // Run retries from its first second
		m.mu.Unlock()
	}
	return nil
}

// saveLocked writes the state file; on failure it marks the state dirty so
// Run retries, and returns the error. m.mu must be held.
func (m *Manager) saveLocked() error {
	bs := slices.Collect(maps.Values(m.bans))
	sortBans(bs)
	if err := writeState(m.path, bs); err != nil {
		if !m.dirty {
			m.log.Error().Err(err).Msg("bans state not saved, will retry")
		}
		m.dirty = true
		m.retrySoon = true
		return err
	}
	if m.dirty {
		m.log.Info().Str("state", m.path).Msg("bans state saved again")
	}
	m.dirty = false
	return nil
}

func (m *Manager) checkOpenLocked() error {
	switch {
	case m.closed:
		return ErrClosed
	case !m.started:
		return ErrNotStarted
	}
	return nil
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Ban bans addr for ttl (0 = permanent) and returns the ban as recorded.
//
// A protected address is refused with ErrProtected and nothing changes.
// The ban is written to the state file first, then applied to the
// firewall, so a crash in between re-applies it at the next Start.
// Re-banning a banned address extends Until (never shortens it) and keeps
// Since; Reason (and Extension, when given) become the new ones.
//
// If the firewall fails the ban stays recorded, Run keeps re-applying it
// (with backoff) and the error is returned. If the state file cannot be
// written the ban is applied anyway, kept in memory, Run retries the write
// and the error is returned: blocking an attack comes first. A firewall
// error wrapping firewall.ErrConntrack is logged and not returned: the
// address is blocked, only its established flows may linger.
func (m *Manager) Ban(ctx context.Context, addr netip.Addr, ttl time.Duration, reason, extension string) (Ban, error) {
	a, err := normalizeAddr(addr)
	if err != nil {
		return Ban{}, err
	}
	if ttl < 0 {
		return Ban{}, fmt.Errorf("bans: negative ttl %v for %s", ttl, a)
	}
	m.fwMu.Lock()
	defer m.fwMu.Unlock()

	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return Ban{}, err
	}
	if p, ok := m.protectedLocked(a); ok {
		m.mu.Unlock()
		m.log.Warn().Str("ip", a.String()).Str("never", p.String()).Str("reason", reason).Msg("ban refused: address is protected")
		return Ban{}, fmt.Errorf("bans: %w: %s is in %s", ErrProtected, a, p)
	}
	now := m.clock().Round(0)
	b, exists := m.bans[a]
	if !exists || b.expired(now) {
		exists = false
		b = Ban{Addr: a, Since: now, Until: now.Add(ttl)}
	}
	switch {
	case ttl == 0:
		b.Until = time.Time{}
	case b.Permanent():
	case now.Add(ttl).After(b.Until):
		b.Until = now.Add(ttl)
	}
	b.Reason = reason
	if extension != "" {
		b.Extension = extension
	}
	m.bans[a] = b
	saveErr := m.saveLocked()
	m.mu.Unlock()
	m.poke()

	fwErr := m.apply(ctx, b)
	ev := m.log.Warn().Str("ip", a.String()).Str("reason", b.Reason).Str("ext", b.Extension).
		Time("until", b.Until).Bool("extended", exists)
	if fwErr != nil {
		ev = ev.AnErr("firewall_error", fwErr)
	}
	if saveErr != nil {
		ev = ev.AnErr("state_error", saveErr)
	}
	ev.Msg("address banned")

	var errs []error
	if saveErr != nil {
		errs = append(errs, fmt.Errorf("bans: %s applied but not saved yet: %w", a, saveErr))
	}
	if fwErr != nil {
		errs = append(errs, fmt.Errorf("bans: %s recorded but not applied yet: %w", a, fwErr))
	}
	return b, errors.Join(errs...)
}

// apply blocks b's address. A conntrack-only failure is logged and counts
// as applied; other failures ask Run for a re-apply. m.fwMu must be held.
func (m *Manager) apply(ctx context.Context, b Ban) error {
	err := m.fw.Block(ctx, b.Addr, b.comment())
	if err == nil {
		return nil
	}
	if errors.Is(err, firewall.ErrConntrack) {
		m.log.Warn().Str("ip", b.Addr.String()).Err(err).Msg("address blocked, established flows not cut")
		return nil
	}
	m.mu.Lock()
	m.retrySoon = true
	m.mu.Unlock()
	m.poke()
	return err
}

// Unban lifts the ban of addr: the state file first, then the firewall. It
// returns ErrNotBanned when addr had no ban (after removing any rule left
// behind). If the firewall fails, Run retries removing the rule.
func (m *Manager) Unban(ctx context.Context, addr netip.Addr) error {
	a, err := normalizeAddr(addr)
	if err != nil {
		return err
	}
	m.fwMu.Lock()
	defer m.fwMu.Unlock()

	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	_, had := m.bans[a]
	var saveErr error
	if had {
		delete(m.bans, a)
		saveErr = m.saveLocked()
	}
	m.mu.Unlock()
	m.poke()

	if err := m.fw.Unblock(ctx, a); err != nil {
		m.mu.Lock()
		m.retrySoon = true
		m.mu.Unlock()
		m.poke()
		return errors.Join(fmt.Errorf("bans: unblock %s: %w", a, err), saveErr)
	}
	if !had {
		return fmt.Errorf("bans: %w: %s", ErrNotBanned, a)
	}
	m.log.Info().Str("ip", a.String()).Msg("ban lifted")
	if saveErr != nil {
		return fmt.Errorf("bans: %s unblocked but not saved yet: %w", a, saveErr)
	}
	return nil
}

// List returns the bans, sorted by Since.
func (m *Manager) List() []Ban {
	m.mu.Lock()
	bs := slices.Collect(maps.Values(m.bans))
	m.mu.Unlock()
	sortBans(bs)
	return bs
}

// SetNever replaces the never-blocked networks (on config reload). Bans of
// addresses that are now protected are lifted at once, and logged: a
// protected address must never stay blocked. Invalid prefixes are logged
// and ignored.
func (m *Manager) SetNever(ps []netip.Prefix) {
	valid := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			m.log.Error().Str("prefix", p.String()).Msg("invalid never-blocked network ignored")
			continue
		}
		valid = append(valid, p)
	}
	never, _ := normalizePrefixes(valid)

	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	m.mu.Lock()
	m.never = never
	var lifted []Ban
	if m.started && !m.closed {
		for a, b := range m.bans {
			if _, ok := m.protectedLocked(a); ok {
				lifted = append(lifted, b)
				delete(m.bans, a)
			}
		}
		if len(lifted) > 0 {
			m.saveLocked()
		}
	}
	m.mu.Unlock()
	if len(lifted) == 0 {
		return
	}
	m.poke()

	ctx, cancel := context.WithTimeout(context.Background(), setNeverTimeout)
	defer cancel()
	for _, b := range lifted {
		ev := m.log.Warn().Str("ip", b.Addr.String()).Str("reason", b.Reason)
		if err := m.fw.Unblock(ctx, b.Addr); err != nil {
			m.mu.Lock()
			m.retrySoon = true
			m.mu.Unlock()
			ev = ev.AnErr("firewall_error", err)
		}
		ev.Msg("ban lifted: address is now protected")
	}
}

// Run expires bans at their Until (a timer set to the next expiry) and
// every ReapplyEvery makes the firewall hold exactly the bans again,
// re-applying missing rules (someone flushed the chain) and removing stray
// ones; after a failure it retries sooner, with backoff from 1s up to
// ReapplyEvery. Problems are logged once per change. It returns nil when
// ctx ends or Close is called.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	m.runs.Add(1)
	m.mu.Unlock()
	defer m.runs.Done()

	m.log.Debug().Dur("reapply_every", m.every).Msg("ban manager running")
	nextSync := m.clock().Add(m.every)
	backoff := firstRetry
	for {
		now := m.clock()
		m.mu.Lock()
		next, hasNext := m.nextExpiryLocked()
		if m.retrySoon {
			m.retrySoon = false
			if t := now.Add(firstRetry); t.Before(nextSync) {
				nextSync = t
			}
		}
		m.mu.Unlock()

		syncT := time.NewTimer(max(nextSync.Sub(now), 0))
		var expC <-chan time.Time
		var expT *time.Timer
		if hasNext {
			expT = time.NewTimer(max(next.Sub(now), 0))
			expC = expT.C
		}

		select {
		case <-ctx.Done():
		case <-m.stop:
		case <-m.wake:
		case <-expC:
			m.expire(ctx)
		case <-syncT.C:
			if m.sync(ctx) {
				backoff = firstRetry
				nextSync = m.clock().Add(m.every)
			} else {
				nextSync = m.clock().Add(backoff)
				backoff = min(backoff*2, m.every)
			}
		}
		syncT.Stop()
		if expT != nil {
			expT.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.stop:
			return nil
		default:
		}
	}
}

func (m *Manager) nextExpiryLocked() (time.Time, bool) {
	var next time.Time
	for _, b := range m.bans {
		if !b.Permanent() && (next.IsZero() || b.Until.Before(next)) {
			next = b.Until
		}
	}
	return next, !next.IsZero()
}

// expire lifts the bans whose Until has come.
func (m *Manager) expire(ctx context.Context) {
	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	m.mu.Lock()
	now := m.clock()
	var gone []Ban
	for a, b := range m.bans {
		if b.expired(now) {
			gone = append(gone, b)
			delete(m.bans, a)
		}
	}
	if len(gone) > 0 {
		m.saveLocked()
	}
	m.mu.Unlock()
	sortBans(gone)
	for _, b := range gone {
		ev := m.log.Info().Str("ip", b.Addr.String()).Time("since", b.Since).Time("until", b.Until).Str("reason", b.Reason)
		if err := m.fw.Unblock(ctx, b.Addr); err != nil {
			m.mu.Lock()
			m.retrySoon = true
			m.mu.Unlock()
			ev = ev.AnErr("firewall_error", err)
		}
		ev.Msg("ban expired")
	}
}

// sync makes the firewall hold exactly the bans and retries a pending state
// write. It reports whether everything is in order.
func (m *Manager) sync(ctx context.Context) bool {
	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	return m.syncLocked(ctx, false)
}

// syncLocked is sync with m.fwMu held. atStart: re-applying is expected
// (Setup flushed the chain), not news.
func (m *Manager) syncLocked(ctx context.Context, atStart bool) bool {
	m.mu.Lock()
	if m.dirty {
		m.saveLocked()
	}
	dirty := m.dirty
	m.retrySoon = false // this sync is the retry; later failures set it again
	m.mu.Unlock()

	var problems []string
	if dirty {
		problems = append(problems, "state file not saved")
	}
	blocked, err := m.fw.Blocked(ctx)
	if err != nil {
		problems = append(problems, "list firewall rules: "+err.Error())
		m.report(problems, nil, nil, atStart)
		return false
	}

	m.mu.Lock()
	now := m.clock()
	want := make(map[netip.Addr]Ban, len(m.bans))
	for a, b := range m.bans {
		if !b.expired(now) {
			want[a] = b
		}
	}
	m.mu.Unlock()

	have := make(map[netip.Addr]bool, len(blocked))
	for _, a := range blocked {
		have[a] = true
	}
	var reapplied, removed []netip.Addr
	for a, b := range want {
		if have[a] {
			continue
		}
		if err := m.fw.Block(ctx, a, b.comment()); err != nil && !errors.Is(err, firewall.ErrConntrack) {
			problems = append(problems, "re-apply "+a.String()+": "+err.Error())
			continue
		}
		reapplied = append(reapplied, a)
	}
	for _, a := range blocked {
		if _, ok := want[a]; ok {
			continue
		}
		if err := m.fw.Unblock(ctx, a); err != nil {
			problems = append(problems, "remove stray rule "+a.String()+": "+err.Error())
			continue
		}
		removed = append(removed, a)
	}
	m.report(problems, reapplied, removed, atStart)
	return len(problems) == 0
}

// report logs the outcome of a sync: every repair (each one is a change:
// someone flushed the chain), a problem once until it changes, and the
// recovery.
func (m *Manager) report(problems []string, reapplied, removed []netip.Addr, atStart bool) {
	slices.SortFunc(reapplied, func(a, b netip.Addr) int { return a.Compare(b) })
	slices.SortFunc(removed, func(a, b netip.Addr) int { return a.Compare(b) })
	switch {
	case atStart:
		m.log.Info().Int("applied", len(reapplied)).Int("removed", len(removed)).Msg("bans applied to firewall")
	case len(reapplied) > 0:
		m.log.Warn().Int("count", len(reapplied)).Strs("ips", addrStrings(reapplied)).
			Msg("firewall rules missing, re-applied")
	}
	if len(removed) > 0 && !atStart {
		m.log.Warn().Int("count", len(removed)).Strs("ips", addrStrings(removed)).
			Msg("firewall rules without a ban, removed")
	}
	slices.Sort(problems)
	p := strings.Join(problems, "; ")
	m.mu.Lock()
	last := m.problem
	m.problem = p
	m.mu.Unlock()
	switch {
	case p == last:
	case p != "":
		m.log.Error().Str("problem", p).Msg("firewall out of step with bans, retrying")
	default:
		m.log.Info().Msg("firewall in step with bans again")
	}
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

// Close stops Run, saves a pending state write and releases the state
// file's lock. The firewall rules stay in place unless TeardownOnClose.
// ctx bounds the wait for Run and in-flight operations.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.stop)
	m.mu.Unlock()

	done := make(chan struct{})
	go func() {
		m.runs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("bans: close: %w", ctx.Err())
	}
	// Wait for an operation in flight (bounded by the firewall's own
	// timeouts); later ones fail with ErrClosed.
	m.fwMu.Lock()
	defer m.fwMu.Unlock()

	var errs []error
	m.mu.Lock()
	if m.dirty {
		if err := m.saveLocked(); err != nil {
			errs = append(errs, err)
		}
	}
	started := m.started
	m.mu.Unlock()
	if m.teardown && started {
		if err := m.fw.Teardown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("bans: firewall teardown: %w", err))
		}
	}
	m.mu.Lock()
	m.lock.release()
	m.lock = nil
	m.mu.Unlock()
	return errors.Join(errs...)
}

// UnbanOffline lifts the ban of addr while no daemon runs: it takes the
// state file's lock (ErrLocked if the daemon holds it), rewrites the file
// atomically without addr, then deletes the rule with fw.Unblock. Like
// Unban it returns ErrNotBanned when the file held no ban for addr, after
// removing any rule anyway.
func UnbanOffline(ctx context.Context, path string, fw firewall.Firewall, addr netip.Addr) error {
	a, err := normalizeAddr(addr)
	if err != nil {
		return err
	}
	lock, err := lockState(path)
	if err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	defer lock.release()
	bs, err := ReadState(path)
	if err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	kept := slices.DeleteFunc(slices.Clone(bs), func(b Ban) bool { return b.Addr.Unmap().WithZone("") == a })
	had := len(kept) != len(bs)
	if had {
		if err := writeState(path, kept); err != nil {
			return fmt.Errorf("bans: %w", err)
		}
	}
	if err := fw.Unblock(ctx, a); err != nil {
		return fmt.Errorf("bans: unblock %s: %w", a, err)
	}
	if !had {
		return fmt.Errorf("bans: %w: %s", ErrNotBanned, a)
	}
	return nil
}
