// Package bans owns the guard's bans: it records each ban in a state file
// before it asks the firewall to drop the address, expires bans on time,
// and keeps the firewall in step with the record (a flushed chain is
// refilled, a crash loses nothing).
//
// Every ban says whether it is real or was recorded through a dry-run
// firewall; a real firewall only ever applies real ones. In observe mode
// the manager reads the state and changes nothing.
//
// The daemon creates one Manager, calls Start, runs Run until shutdown and
// then Close; Enforce and Observe follow the configured mode. ReadState,
// UnbanOffline and EditIncidentsOffline serve `guard bans`, `guard
// unblock`, `guard incidents` and `guard release` when no daemon runs.
package bans

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
)

// The origins of a ban (Ban.Origin).
const (
	// OriginAstguard is the Origin of a ban this guard decided.
	OriginAstguard = "astguard"
	// OriginCrowdSec is the Origin of a ban applied from a CrowdSec
	// decision (package crowdsec).
	OriginCrowdSec = "crowdsec"
)

// Ban is one ban: traffic from Prefix is dropped from Since until Until.
// It is also the ban's record in the state file (version 2).
type Ban struct {
	// Prefix is what is banned; one address is a /32 (IPv4) or a /128
	// (IPv6). Bans made by this version are always one address.
	Prefix netip.Prefix `json:"prefix"`
	Since  time.Time    `json:"since"`
	// Until is when the ban ends; zero (left out of the file) is permanent,
	// never with the defaults.
	Until time.Time `json:"until,omitzero"`
	// Reason says why, e.g. "auth_failures critical: 5 failed
	// authentications in 1m".
	Reason string `json:"reason"`
	// Rule is the detector rule that raised the alert, e.g.
	// "auth_failures"; empty for bans migrated from version 1.
	Rule string `json:"rule,omitempty"`
	// Extension is the extension of the incident, e.g. "SIP/200".
	Extension string `json:"extension,omitempty"`
	// DryRun marks a ban recorded through a dry-run firewall (or migrated
	// from version 1 without proof that it was applied): it is listed and
	// expires, and a real firewall never applies it.
	DryRun bool `json:"dry_run"`
	// Origin says who decided the ban: OriginAstguard, this guard, or
	// OriginCrowdSec, a CrowdSec decision.
	Origin string `json:"origin"`
	// Incident names the incident that owns the ban (Request.Incident,
	// e.g. "inc-3f9a0c12"); empty when the request named none.
	Incident string `json:"incident,omitempty"`
}

// Permanent reports whether the ban never expires.
func (b Ban) Permanent() bool { return b.Until.IsZero() }

// Target is the banned address, or the prefix when it covers more than one.
func (b Ban) Target() string {
	if b.Prefix.IsSingleIP() {
		return b.Prefix.Addr().String()
	}
	return b.Prefix.String()
}

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

// Request is a ban to record: Ban's argument.
type Request struct {
	Addr netip.Addr
	// Prefix, when valid, is banned instead of Addr: a network (a range
	// decision of CrowdSec) or one address.
	Prefix netip.Prefix
	// Origin is who decides the ban; "" is OriginAstguard.
	Origin string
	// TTL is how long the ban lasts; 0 is permanent.
	TTL       time.Duration
	Reason    string
	Rule      string
	Extension string
	// Incident is the incident that decided the ban; a re-ban by another
	// incident takes its name.
	Incident string
}

// Options configures New.
type Options struct {
	// Firewall applies the bans. Required. Its Real says whether the bans
	// recorded now are real or dry-run.
	Firewall firewall.Firewall
	// StatePath is the JSON state file, written atomically with mode 0600.
	// Required. A lock file StatePath+".lock" sits next to it.
	StatePath string
	// Never lists networks that are never blocked: allow-listed networks,
	// the AMI server's address, the guard's own address, loopback.
	Never []netip.Prefix
	// Observe starts the manager in observe mode: Start reads the state
	// file and changes nothing, neither the firewall nor the file; Ban is
	// refused with ErrObserving and Run waits. Enforce ends it.
	Observe bool
	// RecoverFor is how long a DROP rule found in the chain when the state
	// file was corrupt is kept as a ban (it is the only record left of a
	// real ban); default 24h, use the configured ban duration.
	RecoverFor time.Duration
	// Clock gives the time of bans and expiry; default time.Now. Run waits
	// with the time package, so a fake clock belongs in a testing/synctest
	// bubble (where time.Now is fake too).
	Clock func() time.Time
	// Logger gets the component's log lines.
	Logger zerolog.Logger
	// ReapplyEvery is how often Run checks that the firewall still holds
	// every ban and re-applies missing ones; default 30s.
	ReapplyEvery time.Duration
	// TeardownOnClose makes Close remove the firewall chain (when the
	// manager set it up). By default Close leaves the rules in place, so a
	// restarting daemon never opens a window; use it for uninstalling.
	TeardownOnClose bool
}

// Errors.
var (
	// ErrProtected refuses a ban of an address in Options.Never.
	ErrProtected = errors.New("address is protected (never blocked)")
	// ErrFirewallUnavailable: the firewall could not be set up; the
	// manager runs anyway, keeps every ban and re-applies them from Run.
	ErrFirewallUnavailable = errors.New("bans: firewall unavailable, bans kept and retried")
	// ErrNotBanned: Unban of an address that has no ban. The firewall rule
	// is removed anyway, in case one was left behind.
	ErrNotBanned = errors.New("address is not banned")
	// ErrNotStarted: Ban, Unban or Run before Start succeeded.
	ErrNotStarted = errors.New("ban manager not started")
	// ErrClosed: the Manager was closed.
	ErrClosed = errors.New("ban manager closed")
	// ErrObserving: Ban in observe mode, which records and applies nothing.
	ErrObserving = errors.New("observe mode: no ban recorded or applied")
)

const (
	defaultReapplyEvery = 30 * time.Second
	defaultRecoverFor   = 24 * time.Hour
	firstRetry          = time.Second
	setNeverTimeout     = 30 * time.Second
)

// recoveredReason is the Reason of a ban kept from a rule found in the
// chain after the state file was lost.
const recoveredReason = "kept from the firewall rule found at start: the state file was corrupt"

// Manager owns the bans. Its methods are safe for concurrent use.
//
// Locking: fwMu serializes every change that touches the firewall with the
// state change it follows, so the firewall is never behind a newer state
// for long; mu guards the fields and is never held across a firewall call,
// so List answers while iptables is slow.
type Manager struct {
	fw         firewall.Firewall
	real       bool // fw.Real(): bans recorded now are real
	path       string
	clock      func() time.Time
	log        zerolog.Logger
	every      time.Duration
	recoverFor time.Duration
	teardown   bool

	fwMu sync.Mutex

	mu        sync.Mutex
	never     []netip.Prefix
	bans      map[netip.Prefix]Ban
	started   bool
	closed    bool
	observing bool   // observe mode: nothing applied, re-applied, expired or lifted
	setUp     bool   // the firewall was set up: Close may tear it down
	unsaved   bool   // the bans differ from the file since Start (migrated, pruned)
	dirty     bool   // a write failed: retry it
	retrySoon bool   // an operation failed: Run should sync within firstRetry
	corrupt   string // why the state file is corrupt, until it is moved aside
	adopt     bool   // the state was lost: the next listing keeps the chain's rules as bans
	problem   string
	lock      *stateLock
	runs      sync.WaitGroup
	// incidents is the incident book's part of the state file, opaque
	// here: as read at Start, then as SaveIncidents last set it.
	incidents json.RawMessage

	wake chan struct{} // tells Run that deadlines or the mode changed
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
	if opts.RecoverFor <= 0 {
		opts.RecoverFor = defaultRecoverFor
	}
	return &Manager{
		fw:         opts.Firewall,
		real:       opts.Firewall.Real(),
		path:       opts.StatePath,
		clock:      opts.Clock,
		log:        opts.Logger.With().Str("component", "bans").Logger(),
		every:      opts.ReapplyEvery,
		recoverFor: opts.RecoverFor,
		teardown:   opts.TeardownOnClose,
		never:      never,
		observing:  opts.Observe,
		bans:       make(map[netip.Prefix]Ban),
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
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

// normalizeBanPrefix unmaps an IPv4-mapped prefix; a single address must
// be one a firewall rule can hold (firewall.NormalizeAddr).
func normalizeBanPrefix(p netip.Prefix) (netip.Prefix, error) {
	a, bits := p.Addr(), p.Bits()
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	if bits == a.BitLen() {
		a, err := normalizeAddr(a)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

func single(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func (m *Manager) protectedLocked(p netip.Prefix) (netip.Prefix, bool) {
	for _, n := range m.never {
		if n.Overlaps(p) {
			return n, true
		}
	}
	return netip.Prefix{}, false
}

// applies reports whether b is this manager's firewall's to apply: a real
// firewall applies real bans only, a dry-run one dry-run bans only (it only
// logs them), and only bans of one address (the firewall's unit).
func (m *Manager) applies(b Ban) bool {
	return b.DryRun != m.real && b.Prefix.IsSingleIP()
}

// Real reports whether the bans this manager records are real: its
// firewall drops traffic. False with a dry-run firewall.
func (m *Manager) Real() bool { return m.real }

// Start takes the state file's lock and loads the state file, then, unless
// in observe mode, sets the firewall up and makes it hold exactly the bans
// it applies: missing rules are added, rules without a ban removed.
//
// A missing file holds no bans. A file whose content is corrupt does not
// stop the guard: it starts with no bans, says so at error level, and the
// file is moved aside (to StatePath.corrupt-<UTC time>) when the manager
// first writes, which in enforce mode is at once; the DROP rules found in
// the chain then are kept as bans for RecoverFor, since they are the only
// record left of real bans. A state or lock file that is not a private
// regular file (a symlink, another owner, open to other users) or cannot be
// read fails Start: the guard cannot know or keep its bans and must not
// act on a file someone else controls; a person has to look (the error
// says what is wrong). A version 1 file is migrated (State.Upgrade) and,
// in enforce mode, rewritten as version 2.
//
// The state is read before the firewall is set up, so an unreadable file
// never costs the rules still in the kernel. Failing to re-apply a ban is
// logged and left to Run. A failed Start can be retried.
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
	st, err := ReadState(m.path)
	var corrupt error
	if errors.Is(err, ErrCorrupt) {
		corrupt, st = err, State{Version: StateVersion}
	} else if err != nil {
		lock.release()
		return fmt.Errorf("bans: %w", err)
	}
	migrated := st.Version != StateVersion
	if migrated {
		real, dry, err := st.Upgrade(ctx, m.fw)
		if err != nil {
			lock.release()
			return fmt.Errorf("bans: %s: %w", m.path, err)
		}
		ev := m.log.Info()
		if dry > 0 {
			ev = m.log.Warn()
		}
		ev.Str("state", m.path).Int("real", real).Int("dry_run", dry).Bool("firewall_real", m.real).
			Msg("version 1 bans state migrated: version 1 did not record whether a ban was real; a ban counts as real only when the guard's chain holds its DROP rule, the others are kept as dry-run bans and never applied")
	}

	m.mu.Lock()
	m.loadLocked(st.Bans)
	m.incidents = st.Incidents
	m.lock = lock
	m.started = true
	m.unsaved = m.unsaved || migrated
	if corrupt != nil {
		m.corrupt = corrupt.Error()
		m.unsaved = true
	}
	observing := m.observing
	if observing {
		m.pruneLocked(m.clock(), false)
	}
	real, dry := m.countLocked()
	m.mu.Unlock()

	if corrupt != nil {
		ev := m.log.Error().Err(corrupt).Str("state", m.path)
		if observing {
			ev.Msg("bans state file is corrupt: going on with no bans from it; observe mode leaves it in place, it is moved aside when the guard enforces")
		} else {
			ev.Msg("bans state file is corrupt: going on with no bans from it, the file is moved aside")
		}
	}
	if observing {
		m.log.Info().Int("bans", real+dry).Int("real", real).Int("dry_run", dry).Str("state", m.path).
			Msg("bans loaded, not applied: observe mode sets up no firewall and changes nothing")
		return nil
	}
	m.log.Info().Int("bans", real+dry).Int("real", real).Int("dry_run", dry).Str("state", m.path).Msg("bans loaded")
	return m.activateLocked(ctx)
}

// loadLocked puts the bans read from the state file in m.bans: invalid ones
// are dropped (logged), the same prefix twice (mapped and plain) is kept
// once, the longer ban winning. m.mu must be held.
func (m *Manager) loadLocked(loaded []Ban) {
	wide := 0
	for _, b := range loaded {
		p, err := normalizeBanPrefix(b.Prefix)
		if err != nil {
			m.log.Error().Str("ip", b.Prefix.String()).Err(err).Msg("invalid ban dropped from state")
			m.unsaved = true
			continue
		}
		if p != b.Prefix {
			m.unsaved = true
		}
		b.Prefix = p
		if !p.IsSingleIP() {
			wide++
		}
		if old, dup := m.bans[p]; dup {
			m.unsaved = true
			if old.DryRun == b.DryRun && (old.Permanent() || (!b.Permanent() && old.Until.After(b.Until))) || !old.DryRun && b.DryRun {
				continue // keep the longer ban, and a real one over a dry run
			}
		}
		m.bans[p] = b
	}
	if wide > 0 {
		m.log.Error().Int("count", wide).Str("state", m.path).
			Msg("bans of whole prefixes in the state file are kept and listed but not applied: this version of the guard applies bans of single addresses")
	}
}

// pruneLocked drops the bans that expired while the guard was stopped or
// observing, and, when lift is set, the bans of addresses that are now
// protected. It reports whether it dropped any. In observe mode (lift
// false) protected bans stay and a warning says so. m.mu must be held.
func (m *Manager) pruneLocked(now time.Time, lift bool) bool {
	changed := false
	for p, b := range m.bans {
		if b.expired(now) {
			m.log.Info().Str("ip", b.Target()).Time("until", b.Until).Bool("dry_run", b.DryRun).Msg("ban expired while the guard did not enforce")
			delete(m.bans, p)
			changed = true
			continue
		}
		if n, ok := m.protectedLocked(p); ok && lift {
			m.log.Warn().Str("ip", b.Target()).Str("never", n.String()).Msg("ban lifted: address is protected")
			delete(m.bans, p)
			changed = true
		}
	}
	if !lift {
		m.warnProtectedLocked()
	}
	if changed {
		m.unsaved = true
	}
	return changed
}

// warnProtectedLocked says, in observe mode, which real bans are of
// addresses that are now protected: they stay until the guard enforces.
// m.mu must be held.
func (m *Manager) warnProtectedLocked() {
	for p, b := range m.bans {
		if n, ok := m.protectedLocked(p); ok && !b.DryRun {
			m.log.Warn().Str("ip", b.Target()).Str("never", n.String()).
				Msg("address is protected but its ban stays: observe mode lifts nothing; it is lifted when the guard enforces, or now with guard unblock")
		}
	}
}

func (m *Manager) countLocked() (real, dry int) {
	for _, b := range m.bans {
		if b.DryRun {
			dry++
		} else {
			real++
		}
	}
	return real, dry
}

// activateLocked leaves observe mode: it drops expired and protected bans,
// writes the state if it differs from the file (moving a corrupt file
// aside first), sets the firewall up and applies the bans. m.fwMu must be
// held.
func (m *Manager) activateLocked(ctx context.Context) error {
	m.mu.Lock()
	m.observing = false
	m.setUp = true
	if m.corrupt != "" {
		m.adopt = true
	}
	m.pruneLocked(m.clock(), true)
	if m.unsaved {
		m.saveLocked()
	}
	m.mu.Unlock()

	// A firewall that cannot be set up (iptables missing or refused) must
	// not stop the guard: the bans are kept and Run keeps re-applying them,
	// and the caller is told with ErrFirewallUnavailable.
	if err := m.fw.Setup(ctx); err != nil {
		m.mu.Lock()
		m.retrySoon = true
		m.mu.Unlock()
		m.poke()
		return fmt.Errorf("%w: %w", ErrFirewallUnavailable, err)
	}
	if !m.syncLocked(ctx, true) {
		m.mu.Lock()
		m.retrySoon = true // Run retries from its first second
		m.mu.Unlock()
	}
	return nil
}

// Enforce leaves observe mode (a reload to mode = "enforce"): it sets the
// firewall up and applies the bans it should, as Start does in enforce
// mode, and Run resumes expiring and re-applying. Nothing happens when the
// manager already enforces. Errors are those of Start's firewall part.
func (m *Manager) Enforce(ctx context.Context) error {
	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	if !m.observing {
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	m.log.Info().Msg("enforce mode: setting the firewall up and applying the bans")
	err := m.activateLocked(ctx)
	m.poke()
	return err
}

// Observe enters observe mode (a reload to mode = "observe"): from now on
// nothing is applied, re-applied, expired or lifted, and Ban is refused.
// The rules already in the firewall stay as they are: observe mode changes
// nothing, lifting included. Unban (an administrator's request) still
// works.
func (m *Manager) Observe() {
	m.mu.Lock()
	if m.observing || m.closed || !m.started {
		m.observing = true
		m.mu.Unlock()
		return
	}
	m.observing = true
	real, _ := m.countLocked()
	m.mu.Unlock()
	m.poke()
	m.log.Warn().Int("real_bans", real).
		Msg("observe mode: the bans already applied stay in the firewall; nothing is applied, re-applied, expired or lifted until the guard enforces again (guard unblock still lifts a ban)")
}

// saveLocked writes the state file; on failure it marks the state dirty so
// Run retries, and returns the error. A corrupt state file still in place
// is moved aside first (never overwritten). m.mu must be held.
func (m *Manager) saveLocked() error {
	if m.corrupt != "" {
		dst, err := moveAside(m.path, m.clock())
		switch {
		case errors.Is(err, fs.ErrNotExist):
			m.log.Warn().Str("state", m.path).Msg("corrupt bans state file is gone: someone moved it")
		case err != nil:
			err = fmt.Errorf("move the corrupt bans state file %s aside: %w", m.path, err)
			if !m.dirty {
				m.log.Error().Err(err).Msg("bans state not saved, will retry")
			}
			m.dirty, m.retrySoon = true, true
			return err
		default:
			m.log.Error().Str("state", m.path).Str("moved_to", dst).Str("problem", m.corrupt).
				Msg("corrupt bans state file moved aside: the guard goes on without its bans and writes a new one; the old one is kept for you to read")
		}
		m.corrupt = ""
	}
	bs := slices.Collect(maps.Values(m.bans))
	sortBans(bs)
	if err := writeState(m.path, bs, m.incidents); err != nil {
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
	m.dirty, m.unsaved = false, false
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

// Ban bans req.Addr (or req.Prefix) for req.TTL and returns the ban as
// recorded. With a
// dry-run firewall the ban is recorded as a dry-run ban (the firewall only
// logs it); a real ban of the address then stays as it is and is returned:
// a dry run changes nothing real. With a real firewall a dry-run ban of the
// address is replaced by a real one.
//
// A protected address is refused with ErrProtected, and any ban in observe
// mode with ErrObserving; nothing changes. The ban is written to the state
// file first, then applied to the firewall, so a crash in between
// re-applies it at the next Start. Re-banning a banned address extends
// Until (never shortens it) and keeps Since; Reason (and Rule and
// Extension, when given) become the new ones. A ban of this guard's own
// (OriginAstguard) stays its own: a request of another origin only extends
// its Until, and a request of this guard's takes over a ban of another
// origin.
//
// If the firewall fails the ban stays recorded, Run keeps re-applying it
// (with backoff) and the error is returned. If the state file cannot be
// written the ban is applied anyway, kept in memory, Run retries the write
// and the error is returned: blocking an attack comes first. A firewall
// error wrapping firewall.ErrConntrack is logged and not returned: the
// address is blocked, only its established flows may linger.
func (m *Manager) Ban(ctx context.Context, req Request) (Ban, error) {
	var p netip.Prefix
	if req.Prefix.IsValid() {
		var err error
		if p, err = normalizeBanPrefix(req.Prefix); err != nil {
			return Ban{}, err
		}
	} else {
		a, err := normalizeAddr(req.Addr)
		if err != nil {
			return Ban{}, err
		}
		p = single(a)
	}
	origin := req.Origin
	if origin == "" {
		origin = OriginAstguard
	}
	a := Ban{Prefix: p}.Target() // what the messages name
	if req.TTL < 0 {
		return Ban{}, fmt.Errorf("bans: negative ttl %v for %s", req.TTL, a)
	}
	m.fwMu.Lock()
	defer m.fwMu.Unlock()

	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return Ban{}, err
	}
	if m.observing {
		m.mu.Unlock()
		return Ban{}, fmt.Errorf("bans: %s: %w", a, ErrObserving)
	}
	if n, ok := m.protectedLocked(p); ok {
		m.mu.Unlock()
		m.log.Warn().Str("ip", a).Str("never", n.String()).Str("reason", req.Reason).Str("origin", origin).Msg("ban refused: address is protected")
		return Ban{}, fmt.Errorf("bans: %w: %s is in %s", ErrProtected, a, n)
	}
	now := m.clock().Round(0).UTC()
	b, exists := m.bans[p]
	if exists && !b.expired(now) && !b.DryRun && !m.real {
		m.mu.Unlock()
		m.log.Info().Str("ip", a).Str("reason", req.Reason).Time("until", b.Until).
			Msg("dry-run ban not recorded: the address has a real ban, which a dry run does not change")
		return b, nil
	}
	if !exists || b.expired(now) || b.DryRun == m.real {
		exists = false
		b = Ban{Prefix: p, Since: now, Until: now.Add(req.TTL), DryRun: !m.real, Origin: origin}
	}
	// A ban this guard decided stays its own when a CrowdSec decision
	// bans the same address: only its Until may grow, so that the
	// decision's deletion upstream never lifts it (UnbanOrigin).
	keep := exists && b.Origin == OriginAstguard && origin != OriginAstguard
	if origin == OriginAstguard {
		b.Origin = OriginAstguard
	}
	switch {
	case req.TTL == 0:
		b.Until = time.Time{}
	case b.Permanent():
	case now.Add(req.TTL).After(b.Until):
		b.Until = now.Add(req.TTL)
	}
	if !keep {
		b.Reason = req.Reason
		if req.Rule != "" {
			b.Rule = req.Rule
		}
		if req.Extension != "" {
			b.Extension = req.Extension
		}
		if req.Incident != "" {
			b.Incident = req.Incident
		}
	}
	m.bans[p] = b
	saveErr := m.saveLocked()
	m.mu.Unlock()
	m.poke()

	fwErr := m.apply(ctx, b)
	if !b.Prefix.IsSingleIP() {
		m.log.Warn().Str("ip", a).Str("origin", b.Origin).
			Msg("ban of a range recorded but not applied: the firewall applies bans of single addresses")
	}
	ev := m.log.Warn()
	msg := "address banned"
	if b.DryRun {
		ev, msg = m.log.Info(), "dry-run ban recorded: the firewall only logs it"
	}
	ev = ev.Str("ip", a).Str("reason", b.Reason).Str("rule", b.Rule).Str("ext", b.Extension).
		Time("until", b.Until).Bool("extended", exists).Bool("dry_run", b.DryRun).Str("origin", b.Origin)
	if fwErr != nil {
		ev = ev.AnErr("firewall_error", fwErr)
	}
	if saveErr != nil {
		ev = ev.AnErr("state_error", saveErr)
	}
	ev.Msg(msg)

	var errs []error
	if saveErr != nil {
		errs = append(errs, fmt.Errorf("bans: %s applied but not saved yet: %w", a, saveErr))
	}
	if fwErr != nil {
		errs = append(errs, fmt.Errorf("bans: %s recorded but not applied yet: %w", a, fwErr))
	}
	return b, errors.Join(errs...)
}

// apply blocks b's address when b is the firewall's to apply. A
// conntrack-only failure is logged and counts as applied; other failures
// ask Run for a re-apply. m.fwMu must be held.
func (m *Manager) apply(ctx context.Context, b Ban) error {
	if !m.applies(b) {
		return nil
	}
	a := b.Prefix.Addr()
	err := m.fw.Block(ctx, a, b.comment())
	if err == nil {
		return nil
	}
	if errors.Is(err, firewall.ErrConntrack) {
		m.log.Warn().Str("ip", a.String()).Err(err).Msg("address blocked, established flows not cut")
		return nil
	}
	m.mu.Lock()
	m.retrySoon = true
	m.mu.Unlock()
	m.poke()
	return err
}

// UnbanOrigin lifts the ban of p if its Origin is origin: a CrowdSec
// decision deleted upstream lifts the ban it made, never one this guard
// decided itself. It returns ErrNotBanned, changing nothing, when p has no
// ban of that origin. The firewall rule of a single address is removed
// after the state file is written, as by Unban.
func (m *Manager) UnbanOrigin(ctx context.Context, p netip.Prefix, origin string) error {
	p, err := normalizeBanPrefix(p)
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
	b, had := m.bans[p]
	if !had || b.Origin != origin {
		m.mu.Unlock()
		return fmt.Errorf("bans: %w: %s (origin %s)", ErrNotBanned, Ban{Prefix: p}.Target(), origin)
	}
	delete(m.bans, p)
	saveErr := m.saveLocked()
	m.mu.Unlock()
	m.poke()

	var errs []error
	if m.applies(b) {
		if err := m.fw.Unblock(ctx, p.Addr()); err != nil {
			m.mu.Lock()
			m.retrySoon = true
			m.mu.Unlock()
			m.poke()
			errs = append(errs, fmt.Errorf("bans: unblock %s: %w", b.Target(), err))
		}
	}
	if saveErr != nil {
		errs = append(errs, fmt.Errorf("bans: %s lifted but not saved yet: %w", b.Target(), saveErr))
	}
	m.log.Info().Str("ip", b.Target()).Str("origin", origin).Str("reason", b.Reason).Bool("dry_run", b.DryRun).Msg("ban lifted: its decision was deleted")
	return errors.Join(errs...)
}

// Unban lifts the ban of addr: the state file first, then the firewall. It
// returns ErrNotBanned when addr had no ban (after removing any rule left
// behind). If the firewall fails, Run retries removing the rule. It works
// in observe mode too: it is an administrator's request, not the guard's
// decision.
func (m *Manager) Unban(ctx context.Context, addr netip.Addr) error {
	a, err := normalizeAddr(addr)
	if err != nil {
		return err
	}
	p := single(a)
	m.fwMu.Lock()
	defer m.fwMu.Unlock()

	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	_, had := m.bans[p]
	var saveErr error
	if had {
		delete(m.bans, p)
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

// Incidents returns the incident book's part of the state file (a JSON
// array, or nil when there is none): as read at Start (nil when the file
// was missing or corrupt), or as SaveIncidents last set it. The slice is
// the caller's.
func (m *Manager) Incidents() json.RawMessage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.incidents)
}

// SaveIncidents replaces the incident book's part of the state file with
// raw, a JSON array this package stores as it is, and writes the file at
// once (atomically, with the bans) unless raw is what it holds already.
// It returns when the file is written, so a caller that saves before it
// acts never acts twice across a restart.
//
// In observe mode nothing is kept or written and the error wraps
// ErrObserving: observe mode writes nothing to the state file. raw that is
// not a JSON array is refused. A failed write keeps raw in memory, Run
// retries the write (as for a ban) and the error is returned.
func (m *Manager) SaveIncidents(raw json.RawMessage) error {
	if !json.Valid(raw) || !isArray(raw) {
		return errors.New("bans: incidents must be a JSON array")
	}
	raw = compactJSON(raw)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkOpenLocked(); err != nil {
		return err
	}
	if m.observing {
		return fmt.Errorf("bans: incidents not saved: %w", ErrObserving)
	}
	if bytes.Equal(raw, m.incidents) && !m.dirty {
		return nil
	}
	m.incidents = raw
	if err := m.saveLocked(); err != nil {
		m.poke()
		return err
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
// protected address must never stay blocked. In observe mode they are not
// lifted (observe mode changes nothing) and a warning says so; they are
// lifted when the guard enforces. Invalid prefixes are logged and ignored.
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
	switch {
	case !m.started || m.closed:
	case m.observing:
		m.warnProtectedLocked()
	default:
		for p, b := range m.bans {
			if _, ok := m.protectedLocked(p); ok {
				lifted = append(lifted, b)
				delete(m.bans, p)
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
		ev := m.log.Warn().Str("ip", b.Target()).Str("reason", b.Reason).Bool("dry_run", b.DryRun)
		if b.Prefix.IsSingleIP() {
			if err := m.fw.Unblock(ctx, b.Prefix.Addr()); err != nil {
				m.mu.Lock()
				m.retrySoon = true
				m.mu.Unlock()
				ev = ev.AnErr("firewall_error", err)
			}
		}
		ev.Msg("ban lifted: address is now protected")
	}
}

// Run expires bans at their Until (a timer set to the next expiry) and
// every ReapplyEvery makes the firewall hold exactly the bans again,
// re-applying missing rules (someone flushed the chain) and removing stray
// ones; after a failure it retries sooner, with backoff from 1s up to
// ReapplyEvery. Problems are logged once per change. In observe mode it
// waits and does nothing. It returns nil when ctx ends or Close is called.
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
		observing := m.observing
		next, hasNext := m.nextExpiryLocked()
		if m.retrySoon && !observing {
			m.retrySoon = false
			if t := now.Add(firstRetry); t.Before(nextSync) {
				nextSync = t
			}
		}
		m.mu.Unlock()

		if observing {
			select {
			case <-ctx.Done():
				return nil
			case <-m.stop:
				return nil
			case <-m.wake:
			}
			nextSync, backoff = m.clock().Add(m.every), firstRetry
			continue
		}

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

// expire lifts the bans whose Until has come (not in observe mode).
func (m *Manager) expire(ctx context.Context) {
	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	m.mu.Lock()
	if m.observing {
		m.mu.Unlock()
		return
	}
	now := m.clock()
	var gone []Ban
	for p, b := range m.bans {
		if b.expired(now) {
			gone = append(gone, b)
			delete(m.bans, p)
		}
	}
	if len(gone) > 0 {
		m.saveLocked()
	}
	m.mu.Unlock()
	sortBans(gone)
	for _, b := range gone {
		ev := m.log.Info().Str("ip", b.Target()).Time("since", b.Since).Time("until", b.Until).Str("reason", b.Reason).Bool("dry_run", b.DryRun)
		if m.applies(b) {
			if err := m.fw.Unblock(ctx, b.Prefix.Addr()); err != nil {
				m.mu.Lock()
				m.retrySoon = true
				m.mu.Unlock()
				ev = ev.AnErr("firewall_error", err)
			}
		}
		ev.Msg("ban expired")
	}
}

// sync makes the firewall hold exactly the bans it applies and retries a
// pending state write. It reports whether everything is in order. In
// observe mode it does nothing.
func (m *Manager) sync(ctx context.Context) bool {
	m.fwMu.Lock()
	defer m.fwMu.Unlock()
	m.mu.Lock()
	observing := m.observing
	m.mu.Unlock()
	if observing {
		return true
	}
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
	adopt := m.adopt && m.real
	m.adopt = adopt
	m.mu.Unlock()

	var problems []string
	if dirty {
		problems = append(problems, "state file not saved")
	}
	if adopt {
		found, err := m.fw.Rules(ctx)
		if err != nil {
			problems = append(problems, "list the chain's rules to keep them as bans: "+err.Error())
			m.report(problems, nil, nil, atStart)
			return false
		}
		m.adoptRules(found)
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
	for _, b := range m.bans {
		if !b.expired(now) && m.applies(b) {
			want[b.Prefix.Addr()] = b
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

// adoptRules keeps, after a corrupt state file, the DROP rules found in
// the chain (hooked into INPUT or not) as bans for RecoverFor: they are the
// only record left of real bans, which must not be removed as strays.
// Addresses with a ban or now protected are left out.
func (m *Manager) adoptRules(found []netip.Addr) {
	m.mu.Lock()
	m.adopt = false
	since := m.clock().Round(0).UTC()
	var adopted []netip.Addr
	for _, a := range found {
		p := single(a)
		if _, has := m.bans[p]; has {
			continue
		}
		if _, ok := m.protectedLocked(p); ok {
			continue
		}
		m.bans[p] = Ban{Prefix: p, Since: since, Until: since.Add(m.recoverFor), Reason: recoveredReason, Origin: OriginAstguard}
		adopted = append(adopted, a)
	}
	if len(adopted) > 0 {
		m.saveLocked()
	}
	m.mu.Unlock()
	if len(adopted) > 0 {
		m.log.Warn().Int("count", len(adopted)).Strs("ips", addrStrings(adopted)).Dur("for", m.recoverFor).
			Msg("the state file was corrupt: the DROP rules found in the chain are kept as bans")
	}
}

// report logs the outcome of a sync: every repair (each one is a change:
// someone flushed the chain), a problem once until it changes, and the
// recovery.
func (m *Manager) report(problems []string, reapplied, removed []netip.Addr, atStart bool) {
	slices.SortFunc(reapplied, func(a, b netip.Addr) int { return a.Compare(b) })
	slices.SortFunc(removed, func(a, b netip.Addr) int { return a.Compare(b) })
	switch {
	case atStart:
		m.log.Info().Int("applied", len(reapplied)).Int("removed", len(removed)).Bool("firewall_real", m.real).Msg("bans applied to firewall")
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
// file's lock. The firewall rules stay in place unless TeardownOnClose
// (and the manager set the firewall up). ctx bounds the wait for Run and
// in-flight operations.
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
	setUp := m.setUp
	m.mu.Unlock()
	if m.teardown && setUp {
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
// atomically without addr (a version 1 file is migrated first, with fw as
// the evidence, see State.Upgrade), then deletes the rule with fw.Unblock.
// Like Unban it returns ErrNotBanned when the file held no ban for addr,
// after removing any rule anyway. A corrupt file is reported and left in
// place: the guard moves it aside when it next enforces.
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
	st, err := ReadState(path)
	if err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	had := slices.ContainsFunc(st.Bans, func(b Ban) bool { return covers(b.Prefix, a) })
	if had {
		if _, _, err := st.Upgrade(ctx, fw); err != nil {
			return fmt.Errorf("bans: %w", err)
		}
		kept := slices.DeleteFunc(st.Bans, func(b Ban) bool { return covers(b.Prefix, a) })
		if err := writeState(path, kept, st.Incidents); err != nil {
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

// EditIncidentsOffline changes the incident book's part of the state file
// while no daemon runs (`guard release`): it takes the state file's lock
// (ErrLocked if the daemon holds it), reads the file, calls edit with its
// incidents (nil when it has none) and, when edit returns no error,
// replaces them with what edit returned (a JSON array), atomically, the
// bans unchanged. An error of edit is returned and nothing is written. A
// corrupt file is reported and left in place; a version 1 file, which holds
// no incidents, is never rewritten here (its bans need the firewall's
// evidence to migrate): edit is called with nil and what it returns is
// refused.
func EditIncidentsOffline(path string, edit func(json.RawMessage) (json.RawMessage, error)) error {
	lock, err := lockState(path)
	if err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	defer lock.release()
	st, err := ReadState(path)
	if err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	raw, err := edit(st.Incidents)
	if err != nil {
		return err
	}
	if !json.Valid(raw) || !isArray(raw) {
		return errors.New("bans: incidents must be a JSON array")
	}
	if st.Version != StateVersion {
		return fmt.Errorf("bans: %s is a version 1 state file, which holds no incidents: start the guard once to migrate it", path)
	}
	if err := writeState(path, st.Bans, compactJSON(raw)); err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	return nil
}

// covers reports whether the ban prefix p, as read from a file (perhaps an
// IPv4-mapped address), is the single address a.
func covers(p netip.Prefix, a netip.Addr) bool {
	n, err := normalizeBanPrefix(p)
	return err == nil && n == single(a)
}
