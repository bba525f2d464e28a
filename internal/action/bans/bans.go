// Package bans owns the guard's bans: it records each ban durably before
// it asks the firewall to drop the address or network, expires bans on
// time, and keeps the firewall in step with the record (a flushed chain or
// set is refilled, a crash loses nothing).
//
// Every ban says whether it is real or was recorded through a dry-run
// firewall; a real firewall only ever applies real ones. In observe mode
// the manager reads the state and changes nothing.
//
// Bans are written in group commits: the changes made while one write is
// in flight go out together in the next (one journal append and one
// fsync, see JournalName), and are then applied to the firewall in one
// batch. A caller of Ban, BanMany, Unban or SaveIncidents is answered
// only after its change is written and synced (or with the error that
// says it is not), and after the firewall was asked.
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
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
)

// The origins of a ban (Ban.Origin).
const (
	// OriginAstguard is the Origin of a ban this guard decided.
	OriginAstguard = "astguard"
	// OriginCrowdSec is the Origin of a ban applied from a CrowdSec
	// decision.
	OriginCrowdSec = "crowdsec"
)

// Ban is one ban: traffic from Prefix is dropped from Since until Until.
// It is also the ban's record in the state file (version 2).
type Ban struct {
	// Prefix is what is banned; one address is a /32 (IPv4) or a /128
	// (IPv6), a network (an IPv6 address's /64 with ipv6_prefix = 64, a
	// range decided elsewhere) is wider.
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
	// another source named by Request.Origin (e.g. "crowdsec").
	Origin string `json:"origin"`
	// Incident names the incident that owns the ban (Request.Incident,
	// e.g. "inc-3f9a0c12"); empty when the request named none.
	Incident string `json:"incident,omitempty"`
}

// Permanent reports whether the ban never expires.
func (b Ban) Permanent() bool { return b.Until.IsZero() }

// Target is the banned address, or the prefix when it covers more than one.
func (b Ban) Target() string { return firewall.PrefixString(b.Prefix) }

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

// entry is what the firewall gets for b at now: its prefix, for the time
// it has left (0: permanent).
func (b Ban) entry(now time.Time) firewall.Entry {
	e := firewall.Entry{Prefix: b.Prefix, Comment: b.comment()}
	if !b.Permanent() {
		e.Timeout = max(b.Until.Sub(now), time.Second)
	}
	return e
}

// Request is a ban to record: Ban's argument.
type Request struct {
	// Addr is the address to ban. An IPv6 address of this guard's own
	// (Origin empty or OriginAstguard) is banned with its network of
	// Options.IPv6Prefix bits (its /64 by default in the guard), unless
	// that network holds a never-blocked address: then the address alone,
	// and a log line says why. Another source's address is banned as it
	// is: the source decided what to ban.
	Addr netip.Addr
	// Prefix, when valid, is banned as it is instead of Addr (which is then
	// ignored): a single address (a /32 or /128, never widened) or a
	// network, such as a range decided elsewhere. A network overlapping a
	// never-blocked one is refused with ErrProtected.
	Prefix netip.Prefix
	// TTL is how long the ban lasts; 0 is permanent.
	TTL       time.Duration
	Reason    string
	Rule      string
	Extension string
	// Incident is the incident that decided the ban; a re-ban by another
	// incident takes its name.
	Incident string
	// Origin says who decided the ban; empty is OriginAstguard. A ban of
	// this guard's stays its own when another source bans the same
	// prefix: only its Until may grow (its reason and the rest stay), so
	// that the other source's withdrawal (UnbanOrigin) never lifts it; a
	// ban of this guard's takes over another source's.
	Origin string
}

// BanResult is the outcome of one request of BanMany.
type BanResult struct {
	// Ban is the ban as recorded (also with an error saying it is not
	// saved or not applied yet).
	Ban Ban
	Err error
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
	// IPv6Prefix is the length of the network an IPv6 address of a Request
	// is banned with (Request.Addr): 64 bans its /64, since an attacker
	// changes its address inside its /64 at will. 16 to 128; default 128,
	// the address alone.
	IPv6Prefix int
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
	// renewMargin: a set entry whose kernel timeout runs out more than
	// this before its ban needs it to (a ban longer than
	// firewall.MaxSetTimeout, or a permanent one) is added again, renewing
	// its timeout; about once a day for each such ban.
	renewMargin = 24 * time.Hour
	// maxLogged bounds the addresses one log line names.
	maxLogged = 20
)

// recoveredReason is the Reason of a ban kept from a rule found in the
// chain after the state file was lost.
const recoveredReason = "kept from the firewall rule found at start: the state file was corrupt"

// Manager owns the bans. Its methods are safe for concurrent use.
//
// Locking: wTurn is held by whoever writes the pending changes (the group
// commit's leader); fwTurn by whoever applies written changes to the
// firewall, in the order they were written, or re-checks the firewall. A
// slow or stuck firewall never holds up a write (an incident saved before
// its hang-up), and a slow disk never a firewall check. mu guards the
// fields and is never held across a write or a firewall call, so List
// and new bans go on meanwhile. Whoever holds both took fwTurn first.
type Manager struct {
	fw         firewall.Firewall
	real       bool // fw.Real(): bans recorded now are real
	path       string
	clock      func() time.Time
	log        zerolog.Logger
	every      time.Duration
	recoverFor time.Duration
	teardown   bool
	v6bits     int

	wTurn      turn        // the writer's
	journal    *journal    // written with wTurn held
	foldWanted atomic.Bool // the journal has grown past the state file: Run folds it in
	fwTurn     turn        // the firewall's

	mu        sync.Mutex
	never     []netip.Prefix
	bans      map[netip.Prefix]Ban
	started   bool
	closed    bool
	observing bool   // observe mode: nothing applied, re-applied, expired or lifted
	setUp     bool   // the firewall was set up: Close may tear it down
	unsaved   bool   // the bans differ from the file in ways not journaled (migrated, normalized): write the state file
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

	// The group commit: the prefixes whose ban changed since the last
	// write (pending), whether the incidents did, the prefixes an
	// administrator lifted (unblocked even in observe mode), and the round
	// that will carry them.
	pending    map[netip.Prefix]struct{}
	pendingInc bool
	lifted     map[netip.Prefix]struct{}
	round      *round
	// queue holds the rounds written and not yet applied to the firewall,
	// oldest first.
	queue []*round
	// soonest is the earliest Until of the bans (zero: none) unless stale,
	// when a change may have moved it: Run's timer, kept without a scan of
	// every ban at each change.
	soonest      time.Time
	soonestStale bool

	wake chan struct{} // tells Run that deadlines or the mode changed
	stop chan struct{} // closed by Close
}

// round is one group commit: the changes made while it was open, written
// at once, then applied to the firewall at once.
type round struct {
	written chan struct{} // closed when the round is written (or failed to be)
	applied chan struct{} // closed when the firewall was asked (after written)
	saveErr error         // the write failed: the changes are kept and written again later
	fwErr   error         // the firewall refused the batch: Run re-applies it
	// What the firewall is asked: the prefixes of the round whose ban
	// applies (added) and those lifted (removed).
	adds []firewall.Entry
	dels []netip.Prefix
}

func newRound() *round {
	return &round{written: make(chan struct{}), applied: make(chan struct{})}
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
	switch {
	case opts.IPv6Prefix == 0:
		opts.IPv6Prefix = 128
	case opts.IPv6Prefix < firewall.WidestIPv6 || opts.IPv6Prefix > 128:
		return nil, fmt.Errorf("bans: Options.IPv6Prefix %d is not between %d and 128", opts.IPv6Prefix, firewall.WidestIPv6)
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
		v6bits:     opts.IPv6Prefix,
		journal:    newJournal(opts.StatePath),
		wTurn:      newTurn(),
		fwTurn:     newTurn(),
		never:      never,
		observing:  opts.Observe,
		bans:       make(map[netip.Prefix]Ban),
		pending:    make(map[netip.Prefix]struct{}),
		lifted:     make(map[netip.Prefix]struct{}),
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

// normalizeBanPrefix unmaps an IPv4-mapped prefix and checks that a
// firewall can hold it (firewall.NormalizePrefix).
func normalizeBanPrefix(p netip.Prefix) (netip.Prefix, error) {
	n, err := firewall.NormalizePrefix(p)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bans: %w", err)
	}
	return n, nil
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
// logs them).
func (m *Manager) applies(b Ban) bool {
	return b.DryRun != m.real
}

// Real reports whether the bans this manager records are real: its
// firewall drops traffic. False with a dry-run firewall.
func (m *Manager) Real() bool { return m.real }

// Start takes the state file's lock and loads the state file (and its
// journal), then, unless in observe mode, sets the firewall up and makes it
// hold exactly the bans it applies: missing entries are added, entries
// without a ban removed.
//
// A missing file holds no bans. A file whose content is corrupt does not
// stop the guard: it starts with no bans, says so at error level, and the
// file is moved aside (to StatePath.corrupt-<UTC time>, its journal with
// it) when the manager first writes, which in enforce mode is at once; the
// entries found in the firewall then are kept as bans for RecoverFor,
// since they are the only record left of real bans. A state, journal or
// lock file that is not a private regular file (a symlink, another owner,
// open to other users) or cannot be read fails Start: the guard cannot know
// or keep its bans and must not act on a file someone else controls; a
// person has to look (the error says what is wrong). A version 1 file is
// migrated (State.Upgrade) and, in enforce mode, rewritten as version 2.
//
// The state is read before the firewall is set up, so an unreadable file
// never costs the entries still in the kernel. Failing to re-apply a ban
// is logged and left to Run. A failed Start can be retried.
func (m *Manager) Start(ctx context.Context) error {
	m.fwTurn.lock()
	defer m.fwTurn.unlock()
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

	m.wTurn.lock()
	m.journal.sizes()
	m.wTurn.unlock()
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
// are dropped (logged, and lifted in the journal), the same prefix twice
// (mapped and plain) is kept once, the longer ban winning. m.mu must be
// held.
func (m *Manager) loadLocked(loaded []Ban) {
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
		if old, dup := m.bans[p]; dup {
			m.unsaved = true
			if old.DryRun == b.DryRun && (old.Permanent() || (!b.Permanent() && old.Until.After(b.Until))) || !old.DryRun && b.DryRun {
				continue // keep the longer ban, and a real one over a dry run
			}
		}
		m.bans[p] = b
	}
	m.soonestStale = true
}

// setLocked records b (its prefix's ban from now on) for the next commit.
// m.mu must be held.
func (m *Manager) setLocked(b Ban) {
	m.forgetLocked(b.Prefix)
	m.bans[b.Prefix] = b
	m.pending[b.Prefix] = struct{}{}
	if !b.Permanent() && !m.soonestStale && (m.soonest.IsZero() || b.Until.Before(m.soonest)) {
		m.soonest = b.Until
	}
}

// dropLocked records that p is no longer banned, for the next commit.
// m.mu must be held.
func (m *Manager) dropLocked(p netip.Prefix) {
	m.forgetLocked(p)
	delete(m.bans, p)
	m.pending[p] = struct{}{}
}

// forgetLocked marks soonest stale when p's ban, about to change, ends
// then. m.mu must be held.
func (m *Manager) forgetLocked(p netip.Prefix) {
	if old, ok := m.bans[p]; ok && !old.Permanent() && old.Until.Equal(m.soonest) {
		m.soonestStale = true
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
			m.dropLocked(p)
			changed = true
			continue
		}
		if n, ok := m.protectedLocked(p); ok && lift {
			m.log.Warn().Str("ip", b.Target()).Str("never", n.String()).Msg("ban lifted: address is protected")
			m.dropLocked(p)
			changed = true
		}
	}
	if !lift {
		m.warnProtectedLocked()
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
// writes the state (the whole state file when it differs from what was
// read, moving a corrupt file aside first), sets the firewall up and
// applies the bans. m.fwTurn must be held (not m.wTurn).
func (m *Manager) activateLocked(ctx context.Context) error {
	m.mu.Lock()
	m.observing = false
	m.setUp = true
	if m.corrupt != "" {
		m.adopt = true
	}
	m.pruneLocked(m.clock(), true)
	m.mu.Unlock()
	// The lifts of pruned bans are written here; their entries go with
	// the sync below, after Setup.
	m.wTurn.lock()
	m.writeLocked(false)
	m.wTurn.unlock()

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
	m.fwTurn.lock()
	defer m.fwTurn.unlock()
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
// The entries already in the firewall stay as they are: observe mode
// changes nothing, lifting included. Unban (an administrator's request)
// still works.
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

// openRoundLocked returns the round the changes made now are committed
// in. m.mu must be held.
func (m *Manager) openRoundLocked() *round {
	if m.round == nil {
		m.round = newRound()
	}
	return m.round
}

// commit returns once r is written and applied. The caller that gets the
// writer's turn first writes every pending change, its own and those made
// meanwhile; the callers waiting for the turn see their round written and
// go on to the firewall, where the first to get the turn applies every
// written round.
func (m *Manager) commit(ctx context.Context, r *round) {
	m.commitWrite(r)
	if !m.fwTurn.lockOr(r.applied) {
		return
	}
	defer m.fwTurn.unlock()
	select {
	case <-r.applied:
	default:
		m.applyLocked(ctx)
	}
}

// commitWrite returns once r is written (or its write failed).
func (m *Manager) commitWrite(r *round) {
	if !m.wTurn.lockOr(r.written) {
		return
	}
	defer m.wTurn.unlock()
	select {
	case <-r.written:
	default:
		m.writeLocked(true)
	}
}

// turn is a lock a waiter stops waiting for once the holder did its work
// for it: a channel holding one token. A thousand bans waiting for one
// write are woken at once when their round is written, instead of taking
// a mutex one after the other only to see that.
type turn chan struct{}

func newTurn() turn { return make(turn, 1) }

func (t turn) lock()   { t <- struct{}{} }
func (t turn) unlock() { <-t }

// lockOr takes the turn and reports true, or reports false once done is
// closed.
func (t turn) lockOr(done <-chan struct{}) bool {
	select {
	case <-done:
		return false
	case t <- struct{}{}:
		return true
	}
}

// writeLocked writes every pending change in one journal append (or, when
// the state file must be rewritten or the journal has grown, one state
// file) as one round, and queues what the firewall is to do about them:
// the bans there now are added (renewing their timeouts), the lifted ones
// removed. A failed write keeps the changes pending (Run writes them
// again); the firewall is asked all the same, since blocking an attack
// comes first. In observe mode the firewall is only asked to remove what
// an administrator lifted (Unban). Without ops the round asks the firewall
// nothing (the caller syncs it next). m.wTurn must be held.
func (m *Manager) writeLocked(ops bool) {
	m.mu.Lock()
	r := m.round
	m.round = nil
	if r == nil {
		if len(m.pending) == 0 && !m.pendingInc && !m.unsaved && !m.dirty {
			m.mu.Unlock()
			return
		}
		r = newRound()
	}
	now := m.clock()
	dirty := m.pending
	m.pending = make(map[netip.Prefix]struct{})
	lifted := m.lifted
	m.lifted = make(map[netip.Prefix]struct{})
	recs := make([]record, 0, len(dirty)+1)
	for p := range dirty {
		b, ok := m.bans[p]
		if ok {
			recs = append(recs, record{Ban: &b})
		} else {
			recs = append(recs, record{Lift: &p})
		}
		_, byAdmin := lifted[p]
		switch {
		case !ops:
		case m.observing && !(byAdmin && !ok):
		case ok && m.applies(b) && !b.expired(now):
			r.adds = append(r.adds, b.entry(now))
		case !ok || !m.applies(b):
			r.dels = append(r.dels, p)
		}
	}
	incDirty := m.pendingInc
	m.pendingInc = false
	if incDirty {
		recs = append(recs, record{Incidents: m.incidents})
	}
	// The whole state file when it must be, or when the journal has grown
	// enough (Run folds it in soon after it grew: see fold).
	var snap []Ban
	snapshot := m.unsaved || m.corrupt != "" || m.journal.due()
	if snapshot {
		snap = slices.Collect(maps.Values(m.bans))
	}
	incidents := m.incidents
	if len(r.adds) > 0 || len(r.dels) > 0 {
		m.queue = append(m.queue, r)
	}
	m.mu.Unlock()

	if snapshot {
		sortBans(snap)
	}
	saveErr := m.write(recs, snapshot, snap, incidents)
	if saveErr == nil && m.journal.due() {
		m.foldWanted.Store(true)
		m.poke() // Run folds the journal in, before the next ban has to
	}
	if saveErr != nil {
		// Written again by the next commit (Run's retry, the next ban).
		m.mu.Lock()
		for p := range dirty {
			m.pending[p] = struct{}{}
		}
		m.pendingInc = m.pendingInc || incDirty
		m.mu.Unlock()
		m.poke()
	}
	r.saveErr = saveErr
	close(r.written)
	if len(r.adds) == 0 && len(r.dels) == 0 {
		close(r.applied)
	}
}

// applyLocked asks the firewall to do what the rounds written so far say,
// in one batch: for each prefix what its latest round says. A failure is
// every round's and has Run re-apply. m.fwTurn must be held.
func (m *Manager) applyLocked(ctx context.Context) {
	m.mu.Lock()
	queue := m.queue
	m.queue = nil
	m.mu.Unlock()
	if len(queue) == 0 {
		return
	}
	adds := map[netip.Prefix]firewall.Entry{}
	dels := map[netip.Prefix]bool{}
	for _, r := range queue {
		for _, e := range r.adds {
			adds[e.Prefix] = e
			delete(dels, e.Prefix)
		}
		for _, p := range r.dels {
			dels[p] = true
			delete(adds, p)
		}
	}
	var errs []error
	if len(dels) > 0 {
		ps := slices.SortedFunc(maps.Keys(dels), firewall.ComparePrefix)
		if err := m.fw.Unblock(ctx, ps...); err != nil {
			errs = append(errs, err)
		}
	}
	if len(adds) > 0 {
		es := slices.SortedFunc(maps.Values(adds), func(a, b firewall.Entry) int { return firewall.ComparePrefix(a.Prefix, b.Prefix) })
		if err := m.fw.Block(ctx, es...); err != nil {
			errs = append(errs, err)
		}
	}
	fwErr := errors.Join(errs...)
	if fwErr != nil {
		m.mu.Lock()
		m.retrySoon = true
		m.mu.Unlock()
		m.poke()
	}
	for _, r := range queue {
		r.fwErr = fwErr
		close(r.applied)
	}
}

// busyLocked returns the prefixes whose change is not applied yet:
// pending, or written and queued for the firewall. m.mu must be held.
func (m *Manager) busyLocked() map[netip.Prefix]struct{} {
	busy := maps.Clone(m.pending)
	for _, r := range m.queue {
		for _, e := range r.adds {
			busy[e.Prefix] = struct{}{}
		}
		for _, p := range r.dels {
			busy[p] = struct{}{}
		}
	}
	return busy
}

// write makes recs durable: appended to the journal, or, with snapshot,
// the whole state (snap and incidents) written to the state file, the
// journal emptied. A corrupt state file still in place is moved aside
// first (never overwritten). m.wTurn must be held.
func (m *Manager) write(recs []record, snapshot bool, snap []Ban, incidents json.RawMessage) error {
	m.mu.Lock()
	corrupt := m.corrupt
	m.mu.Unlock()
	err := func() error {
		if corrupt != "" {
			dst, err := moveAside(m.path, m.clock())
			switch {
			case errors.Is(err, fs.ErrNotExist):
				m.log.Warn().Str("state", m.path).Msg("corrupt bans state file is gone: someone moved it")
			case err != nil:
				return fmt.Errorf("move the corrupt bans state file %s aside: %w", m.path, err)
			default:
				m.log.Error().Str("state", m.path).Str("moved_to", dst).Str("problem", corrupt).
					Msg("corrupt bans state file moved aside: the guard goes on without its bans and writes a new one; the old one is kept for you to read")
			}
			m.journal.close()
			m.mu.Lock()
			m.corrupt = ""
			m.mu.Unlock()
		}
		if snapshot {
			return m.journal.snapshot(snap, incidents)
		}
		return m.journal.append(recs)
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		if !m.dirty {
			m.log.Error().Err(err).Msg("bans state not saved, will retry")
		}
		m.dirty, m.retrySoon = true, true
		if snapshot {
			m.unsaved = true
		}
		return err
	}
	if m.dirty {
		m.log.Info().Str("state", m.path).Msg("bans state saved again")
	}
	m.dirty = false
	if snapshot {
		m.unsaved = false
	}
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

// Ban bans req (req.Addr, or req.Prefix) for req.TTL and returns the ban
// as recorded. With a dry-run firewall the ban is recorded as a dry-run
// ban (the firewall only logs it); a real ban of the prefix then stays as
// it is and is returned: a dry run changes nothing real. With a real
// firewall a dry-run ban of the prefix is replaced by a real one.
//
// An IPv6 req.Addr is banned with its network of Options.IPv6Prefix bits,
// unless that network holds a never-blocked address: then the address
// alone, and a warning says so. A protected address (or a req.Prefix
// overlapping a protected network) is refused with ErrProtected, and any
// ban in observe mode with ErrObserving; nothing changes. Re-banning a
// banned prefix extends Until (never shortens it) and keeps Since; Reason
// (and Rule, Extension and Incident, when given) become the new ones.
//
// Ban returns once the ban is written and synced to the journal and the
// firewall was asked to apply it (a group commit, see the package
// comment). If the firewall fails the ban stays recorded, Run keeps
// re-applying it (with backoff) and the error says "recorded but not
// applied yet". If the write fails the ban is applied anyway, kept in
// memory, Run retries the write and the error says "applied but not saved
// yet": blocking an attack comes first.
func (m *Manager) Ban(ctx context.Context, req Request) (Ban, error) {
	res := m.banMany(ctx, []Request{req}, true)
	return res[0].Ban, res[0].Err
}

// BanMany is Ban for many requests at once: one write and one firewall
// batch for all of them. The result i is that of reqs[i]. One summary line
// is logged, not a line per ban.
func (m *Manager) BanMany(ctx context.Context, reqs []Request) []BanResult {
	return m.banMany(ctx, reqs, len(reqs) == 1)
}

// banned says what happened to one request of banMany.
type banned struct {
	b        Ban
	extended bool
	narrowed netip.Prefix // the network not banned whole, when the address alone was
	never    netip.Prefix // the never-blocked network inside it
	changed  bool         // the state changed: wait for the commit
}

func (m *Manager) banMany(ctx context.Context, reqs []Request, logEach bool) []BanResult {
	out := make([]BanResult, len(reqs))
	what := make([]banned, len(reqs))
	targets := make([]netip.Prefix, len(reqs))
	for i, req := range reqs {
		targets[i], out[i].Err = m.target(req)
	}

	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	now := m.clock().Round(0).UTC()
	var r *round
	for i, req := range reqs {
		if out[i].Err != nil {
			continue
		}
		if m.observing {
			out[i].Err = fmt.Errorf("bans: %s: %w", firewall.PrefixString(targets[i]), ErrObserving)
			continue
		}
		what[i], out[i].Err = m.banLocked(targets[i], req, now)
		out[i].Ban = what[i].b
		if what[i].changed {
			r = m.openRoundLocked()
		}
	}
	m.mu.Unlock()
	if r != nil {
		m.poke()
		m.commit(ctx, r)
	}

	for i := range out {
		w := what[i]
		if !w.changed {
			continue
		}
		var errs []error
		if r.saveErr != nil {
			errs = append(errs, fmt.Errorf("bans: %s applied but not saved yet: %w", w.b.Target(), r.saveErr))
		}
		if r.fwErr != nil && m.applies(w.b) {
			errs = append(errs, fmt.Errorf("bans: %s recorded but not applied yet: %w", w.b.Target(), r.fwErr))
		}
		out[i].Err = errors.Join(errs...)
		if logEach {
			m.logBan(w, r)
		}
	}
	if !logEach {
		m.logBatch(out, what, r)
	}
	return out
}

// target is the prefix req asks to ban, before the never-blocked check.
func (m *Manager) target(req Request) (netip.Prefix, error) {
	if req.TTL < 0 {
		return netip.Prefix{}, fmt.Errorf("bans: negative ttl %v", req.TTL)
	}
	if req.Prefix.IsValid() {
		return normalizeBanPrefix(req.Prefix)
	}
	a, err := normalizeAddr(req.Addr)
	if err != nil {
		return netip.Prefix{}, err
	}
	return single(a), nil
}

// banLocked records the ban of p (widened for an IPv6 address) for req at
// now. m.mu must be held.
func (m *Manager) banLocked(p netip.Prefix, req Request, now time.Time) (banned, error) {
	var w banned
	if n, ok := m.protectedLocked(p); ok {
		m.log.Warn().Str("ip", firewall.PrefixString(p)).Str("never", n.String()).Str("reason", req.Reason).Msg("ban refused: address is protected")
		return w, fmt.Errorf("bans: %w: %s is in %s", ErrProtected, firewall.PrefixString(p), n)
	}
	origin := req.Origin
	if origin == "" {
		origin = OriginAstguard
	}
	if !req.Prefix.IsValid() && origin == OriginAstguard && p.Addr().Is6() && m.v6bits < 128 {
		wide := netip.PrefixFrom(p.Addr(), m.v6bits).Masked()
		if n, ok := m.protectedLocked(wide); ok {
			w.narrowed, w.never = wide, n
		} else {
			p = wide
		}
	}
	b, exists := m.bans[p]
	if exists && !b.expired(now) && !b.DryRun && !m.real {
		m.log.Info().Str("ip", b.Target()).Str("reason", req.Reason).Time("until", b.Until).
			Msg("dry-run ban not recorded: the address has a real ban, which a dry run does not change")
		w.b = b
		return w, nil
	}
	if !exists || b.expired(now) || b.DryRun == m.real {
		exists = false
		b = Ban{Prefix: p, Since: now, Until: now.Add(req.TTL), DryRun: !m.real, Origin: origin}
	}
	switch {
	case req.TTL == 0:
		b.Until = time.Time{}
	case b.Permanent():
	case now.Add(req.TTL).After(b.Until):
		b.Until = now.Add(req.TTL)
	}
	// This guard's own ban stays its own under another source's ban of
	// it: only its Until grows.
	if !exists || b.Origin != OriginAstguard || origin == OriginAstguard {
		b.Origin = origin
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
	m.setLocked(b)
	w.b, w.extended, w.changed = b, exists, true
	return w, nil
}

// logBan logs one ban's outcome: the line an administrator routes.
func (m *Manager) logBan(w banned, r *round) {
	b := w.b
	if w.narrowed.IsValid() {
		m.log.Warn().Str("ip", b.Target()).Str("prefix", w.narrowed.String()).Str("never", w.never.String()).
			Msg("prefix not banned whole: it holds a never-blocked address; the address alone is banned")
	}
	ev := m.log.Warn()
	msg := "address banned"
	if b.DryRun {
		ev, msg = m.log.Info(), "dry-run ban recorded: the firewall only logs it"
	}
	ev = ev.Str("ip", b.Target()).Str("reason", b.Reason).Str("rule", b.Rule).Str("ext", b.Extension).
		Time("until", b.Until).Bool("extended", w.extended).Bool("dry_run", b.DryRun).Str("origin", b.Origin)
	if r.fwErr != nil && m.applies(b) {
		ev = ev.AnErr("firewall_error", r.fwErr)
	}
	if r.saveErr != nil {
		ev = ev.AnErr("state_error", r.saveErr)
	}
	ev.Msg(msg)
}

// logBatch logs a BanMany of several requests in one line.
func (m *Manager) logBatch(out []BanResult, what []banned, r *round) {
	recorded, refused, narrowed := 0, 0, 0
	var errs []string
	for i, res := range out {
		switch {
		case what[i].changed:
			recorded++
		case res.Err != nil:
			refused++
			if len(errs) < maxLogged {
				errs = append(errs, res.Err.Error())
			}
		}
		if what[i].narrowed.IsValid() {
			narrowed++
		}
	}
	if recorded+refused == 0 {
		return
	}
	ev := m.log.Warn().Int("recorded", recorded).Int("refused", refused).Int("narrowed", narrowed).Bool("dry_run", !m.real)
	if len(errs) > 0 {
		ev = ev.Strs("refusals", errs)
	}
	if r != nil && r.fwErr != nil {
		ev = ev.AnErr("firewall_error", r.fwErr)
	}
	if r != nil && r.saveErr != nil {
		ev = ev.AnErr("state_error", r.saveErr)
	}
	ev.Msg("bans recorded")
}

// Unban lifts every ban covering addr: its own and that of any network
// holding it (an IPv6 address's /64); Lift says which. It returns
// ErrNotBanned when addr had none (after removing any firewall entry of
// the address alone, in case one was left behind).
func (m *Manager) Unban(ctx context.Context, addr netip.Addr) error {
	_, err := m.Lift(ctx, addr)
	return err
}

// Lift lifts every ban covering addr and returns them: the state first
// (written and synced), then the firewall. If the firewall fails, Run
// retries removing the entries. It works in observe mode too: it is an
// administrator's request, not the guard's decision.
func (m *Manager) Lift(ctx context.Context, addr netip.Addr) ([]Ban, error) {
	a, err := normalizeAddr(addr)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return nil, err
	}
	var gone []Ban
	for bits := a.BitLen(); bits >= 0; bits-- {
		p := netip.PrefixFrom(a, bits).Masked()
		if b, ok := m.bans[p]; ok {
			gone = append(gone, b)
		}
	}
	if len(gone) == 0 {
		gone = nil
	}
	m.liftLocked(single(a))
	for _, b := range gone {
		m.liftLocked(b.Prefix)
	}
	r := m.openRoundLocked()
	m.mu.Unlock()
	m.commit(ctx, r)
	return gone, m.liftOutcome(a.String(), gone, r)
}

// UnbanOrigin lifts the ban of exactly p (a network or a single address:
// a network's ban is not an address's in it) if its Origin is origin: a
// decision of another source deleted upstream lifts the ban it made, never
// one this guard decided itself. It returns ErrNotBanned, changing
// nothing, when p has no ban of that origin. The state is written first,
// then the entry removed from the firewall, as by Lift.
func (m *Manager) UnbanOrigin(ctx context.Context, p netip.Prefix, origin string) error {
	n, err := normalizeBanPrefix(p)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	b, had := m.bans[n]
	if !had || b.Origin != origin {
		m.mu.Unlock()
		return fmt.Errorf("bans: %w: %s (origin %s)", ErrNotBanned, firewall.PrefixString(n), origin)
	}
	m.dropLocked(n)
	r := m.openRoundLocked()
	m.mu.Unlock()
	m.commit(ctx, r)
	var errs []error
	if r.fwErr != nil && m.applies(b) {
		errs = append(errs, fmt.Errorf("bans: unblock %s: %w", b.Target(), r.fwErr))
	}
	if r.saveErr != nil {
		errs = append(errs, fmt.Errorf("bans: %s lifted but not saved yet: %w", b.Target(), r.saveErr))
	}
	m.log.Info().Str("ip", b.Target()).Str("origin", origin).Str("reason", b.Reason).Bool("dry_run", b.DryRun).Msg("ban lifted: its decision was deleted")
	return errors.Join(errs...)
}

// liftLocked drops p's ban (if any) and has its entry removed even in
// observe mode. m.mu must be held.
func (m *Manager) liftLocked(p netip.Prefix) {
	m.dropLocked(p)
	m.lifted[p] = struct{}{}
}

// liftOutcome logs and reports the outcome of a Lift or UnbanPrefix of
// what.
func (m *Manager) liftOutcome(what string, gone []Ban, r *round) error {
	if r.fwErr != nil {
		return errors.Join(fmt.Errorf("bans: unblock %s: %w", what, r.fwErr), r.saveErr)
	}
	if len(gone) == 0 {
		return fmt.Errorf("bans: %w: %s", ErrNotBanned, what)
	}
	for _, b := range gone {
		ev := m.log.Info().Str("ip", b.Target()).Str("origin", b.Origin)
		if b.Target() != what {
			ev = ev.Str("asked", what)
			ev.Msg("ban lifted: the network holding the address")
			continue
		}
		ev.Msg("ban lifted")
	}
	if r.saveErr != nil {
		return fmt.Errorf("bans: %s unblocked but not saved yet: %w", what, r.saveErr)
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
// raw, a JSON array this package stores as it is, and writes it at once
// (in the journal, with the bans' changes of the same commit) unless raw
// is what it holds already. It returns when the write is synced, so a
// caller that saves before it acts never acts twice across a restart.
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
	if err := m.checkOpenLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	if m.observing {
		m.mu.Unlock()
		return fmt.Errorf("bans: incidents not saved: %w", ErrObserving)
	}
	if bytes.Equal(raw, m.incidents) && !m.pendingInc && !m.dirty {
		m.mu.Unlock()
		return nil
	}
	m.incidents = raw
	m.pendingInc = true
	r := m.openRoundLocked()
	m.mu.Unlock()
	m.commitWrite(r)
	return r.saveErr
}

// List returns the bans, sorted by Since.
func (m *Manager) List() []Ban {
	m.mu.Lock()
	bs := slices.Collect(maps.Values(m.bans))
	m.mu.Unlock()
	sortBans(bs)
	return bs
}

// SetNever replaces the never-blocked networks (on config reload). Bans
// overlapping a protected network are lifted at once, and logged: a
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
				m.dropLocked(p)
			}
		}
	}
	if len(lifted) == 0 {
		m.mu.Unlock()
		return
	}
	r := m.openRoundLocked()
	m.mu.Unlock()
	m.poke()

	ctx, cancel := context.WithTimeout(context.Background(), setNeverTimeout)
	defer cancel()
	m.commit(ctx, r)
	sortBans(lifted)
	for _, b := range lifted {
		ev := m.log.Warn().Str("ip", b.Target()).Str("reason", b.Reason).Bool("dry_run", b.DryRun)
		if r.fwErr != nil {
			ev = ev.AnErr("firewall_error", r.fwErr)
		}
		ev.Msg("ban lifted: address is now protected")
	}
}

// Run expires bans at their Until (a timer set to the next expiry) and
// every ReapplyEvery makes the firewall hold exactly the bans again,
// re-applying missing entries (someone flushed the chain or the set),
// renewing set timeouts that would run out before their ban ends, and
// removing stray ones; after a failure it retries sooner, with backoff
// from 1s up to ReapplyEvery. Problems are logged once per change. In
// observe mode it waits and does nothing. It returns nil when ctx ends or
// Close is called.
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

		m.fold(ctx)
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

// fold writes the state file whole and empties the journal when the
// journal has grown past it (a flood of bans): done here, in Run, rather
// than by the next ban's write. Bans made meanwhile wait for it (some
// 0.3 s at 100,000 bans), and are written with it.
func (m *Manager) fold(ctx context.Context) {
	if !m.foldWanted.CompareAndSwap(true, false) {
		return
	}
	m.wTurn.lock()
	if !m.journal.due() {
		m.wTurn.unlock()
		return
	}
	m.mu.Lock()
	m.unsaved = true // the whole state file, pending changes or not
	m.mu.Unlock()
	m.writeLocked(true)
	m.wTurn.unlock()
	m.fwTurn.lock()
	m.applyLocked(ctx)
	m.fwTurn.unlock()
}

// nextExpiryLocked returns the earliest Until of the bans, scanning them
// only when a change made the one known stale. m.mu must be held.
func (m *Manager) nextExpiryLocked() (time.Time, bool) {
	if m.soonestStale {
		var next time.Time
		for _, b := range m.bans {
			if !b.Permanent() && (next.IsZero() || b.Until.Before(next)) {
				next = b.Until
			}
		}
		m.soonest, m.soonestStale = next, false
	}
	return m.soonest, !m.soonest.IsZero()
}

// expire lifts the bans whose Until has come (not in observe mode).
func (m *Manager) expire(ctx context.Context) {
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
			m.dropLocked(p)
		}
	}
	if len(gone) == 0 {
		m.mu.Unlock()
		return
	}
	r := m.openRoundLocked()
	m.mu.Unlock()
	m.commit(ctx, r)
	sortBans(gone)
	for i, b := range gone {
		if i == maxLogged {
			m.log.Info().Int("count", len(gone)-maxLogged).Msg("more bans expired")
			break
		}
		ev := m.log.Info().Str("ip", b.Target()).Time("since", b.Since).Time("until", b.Until).Str("reason", b.Reason).Bool("dry_run", b.DryRun)
		if r.fwErr != nil && m.applies(b) {
			ev = ev.AnErr("firewall_error", r.fwErr)
		}
		ev.Msg("ban expired")
	}
}

// sync makes the firewall hold exactly the bans it applies and retries a
// pending state write. It reports whether everything is in order. In
// observe mode it does nothing.
func (m *Manager) sync(ctx context.Context) bool {
	m.fwTurn.lock()
	defer m.fwTurn.unlock()
	m.mu.Lock()
	observing := m.observing
	m.mu.Unlock()
	if observing {
		return true
	}
	return m.syncLocked(ctx, false)
}

// syncLocked is sync with m.fwTurn held (not m.wTurn). atStart: re-applying
// is expected (the entries of a new boot are gone), not news.
func (m *Manager) syncLocked(ctx context.Context, atStart bool) bool {
	m.wTurn.lock()
	m.writeLocked(true) // what is pending, a failed write included
	m.wTurn.unlock()
	m.applyLocked(ctx)
	m.mu.Lock()
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
			problems = append(problems, "list the firewall's entries to keep them as bans: "+err.Error())
			m.report(problems, nil, nil, atStart)
			return false
		}
		m.adoptRules(ctx, found)
	}
	blocked, err := m.fw.Blocked(ctx)
	if err != nil {
		problems = append(problems, "list firewall entries: "+err.Error())
		m.report(problems, nil, nil, atStart)
		return false
	}

	// The bans changed since the write above are their own commit's:
	// left alone here.
	m.mu.Lock()
	now := m.clock()
	busy := m.busyLocked()
	want := make(map[netip.Prefix]Ban, len(m.bans))
	for p, b := range m.bans {
		if _, changing := busy[p]; !changing && !b.expired(now) && m.applies(b) {
			want[p] = b
		}
	}
	m.mu.Unlock()

	have := make(map[netip.Prefix]time.Duration, len(blocked))
	for _, e := range blocked {
		have[e.Prefix] = e.Timeout
	}
	var missing, renewed []firewall.Entry
	for p, b := range want {
		left, ok := have[p]
		switch {
		case !ok:
			missing = append(missing, b.entry(now))
		case left > 0 && left+renewMargin < needed(b, now):
			renewed = append(renewed, b.entry(now))
		}
	}
	var strays []netip.Prefix
	for _, e := range blocked {
		_, wanted := want[e.Prefix]
		_, pending := busy[e.Prefix]
		if !wanted && !pending {
			strays = append(strays, e.Prefix)
		}
	}
	var reapplied, removed []netip.Prefix
	if add := append(missing, renewed...); len(add) > 0 {
		slices.SortFunc(add, func(a, b firewall.Entry) int { return firewall.ComparePrefix(a.Prefix, b.Prefix) })
		if err := m.fw.Block(ctx, add...); err != nil {
			problems = append(problems, fmt.Sprintf("re-apply %d bans: %v", len(add), err))
		} else {
			for _, e := range missing {
				reapplied = append(reapplied, e.Prefix)
			}
			if len(renewed) > 0 {
				m.log.Info().Int("count", len(renewed)).Msg("kernel timeouts of long bans renewed")
			}
		}
	}
	if len(strays) > 0 {
		if err := m.fw.Unblock(ctx, strays...); err != nil {
			problems = append(problems, fmt.Sprintf("remove %d stray entries: %v", len(strays), err))
		} else {
			removed = strays
		}
	}
	m.report(problems, reapplied, removed, atStart)
	return len(problems) == 0
}

// needed is how long the kernel must keep b's entry from now on: until
// b ends, at most firewall.MaxSetTimeout.
func needed(b Ban, now time.Time) time.Duration {
	if b.Permanent() {
		return firewall.MaxSetTimeout
	}
	return min(b.Until.Sub(now), firewall.MaxSetTimeout)
}

// adoptRules keeps, after a corrupt state file, the entries found in the
// firewall (its chain's rules, its sets) as bans for RecoverFor: they are
// the only record left of real bans, which must not be removed as strays.
// Prefixes with a ban or now protected are left out.
func (m *Manager) adoptRules(ctx context.Context, found []netip.Prefix) {
	m.mu.Lock()
	m.adopt = false
	since := m.clock().Round(0).UTC()
	var adopted []netip.Prefix
	for _, p := range found {
		if _, has := m.bans[p]; has {
			continue
		}
		if _, ok := m.protectedLocked(p); ok {
			continue
		}
		m.setLocked(Ban{Prefix: p, Since: since, Until: since.Add(m.recoverFor), Reason: recoveredReason, Origin: OriginAstguard})
		adopted = append(adopted, p)
	}
	m.mu.Unlock()
	if len(adopted) == 0 {
		return
	}
	m.wTurn.lock()
	m.writeLocked(true)
	m.wTurn.unlock()
	m.applyLocked(ctx)
	m.log.Warn().Int("count", len(adopted)).Strs("ips", prefixStrings(adopted)).Dur("for", m.recoverFor).
		Msg("the state file was corrupt: the entries found in the firewall (DROP rules, set entries) are kept as bans")
}

// report logs the outcome of a sync: every repair (each one is a change:
// someone flushed the chain or the set), a problem once until it changes,
// and the recovery.
func (m *Manager) report(problems []string, reapplied, removed []netip.Prefix, atStart bool) {
	slices.SortFunc(reapplied, firewall.ComparePrefix)
	slices.SortFunc(removed, firewall.ComparePrefix)
	switch {
	case atStart:
		m.log.Info().Int("applied", len(reapplied)).Int("removed", len(removed)).Bool("firewall_real", m.real).Msg("bans applied to firewall")
	case len(reapplied) > 0:
		m.log.Warn().Int("count", len(reapplied)).Strs("ips", prefixStrings(reapplied)).
			Msg("firewall rules missing, re-applied")
	}
	if len(removed) > 0 && !atStart {
		m.log.Warn().Int("count", len(removed)).Strs("ips", prefixStrings(removed)).
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

// prefixStrings names ps as a person writes them, at most maxLogged (the
// log line's count says how many there are).
func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, min(len(ps), maxLogged))
	for _, p := range ps[:min(len(ps), maxLogged)] {
		out = append(out, firewall.PrefixString(p))
	}
	return out
}

// Close stops Run, writes what is pending (the whole state file, folding
// the journal in, unless in observe mode) and releases the state file's
// lock. The firewall entries stay in place unless TeardownOnClose (and the
// manager set the firewall up). ctx bounds the wait for Run and in-flight
// operations.
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
	// Wait for a commit in flight (bounded by the firewall's own
	// timeouts); later operations fail with ErrClosed.
	m.fwTurn.lock()
	defer m.fwTurn.unlock()

	var errs []error
	m.wTurn.lock()
	m.mu.Lock()
	observing := m.observing
	// A clean stop folds the journal into the state file: it then holds
	// every ban, for a person reading it and for an older guard.
	if !observing && m.journal.size > 0 {
		m.unsaved = true
	}
	m.mu.Unlock()
	if !observing {
		m.writeLocked(true)
	}
	m.wTurn.unlock()
	if !observing {
		m.applyLocked(ctx)
	}
	m.mu.Lock()
	if m.dirty {
		errs = append(errs, errors.New("bans: state not saved at close"))
	}
	setUp := m.setUp
	m.mu.Unlock()
	if m.teardown && setUp {
		if err := m.fw.Teardown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("bans: firewall teardown: %w", err))
		}
	}
	m.wTurn.lock()
	m.journal.close()
	m.wTurn.unlock()
	m.mu.Lock()
	m.lock.release()
	m.lock = nil
	m.mu.Unlock()
	return errors.Join(errs...)
}

// UnbanOffline lifts the bans covering addr while no daemon runs, as Lift
// does: it takes the state file's lock (ErrLocked if the daemon holds it),
// records the lifts in the journal (a version 1 file is migrated and
// rewritten first, with fw as the evidence, see State.Upgrade), then
// removes the entries with fw.Unblock, and returns the bans lifted. Like
// Unban it returns ErrNotBanned when the file held no ban covering addr,
// after removing any entry of the address anyway. A corrupt file is
// reported and left in place: the guard moves it aside when it next
// enforces.
func UnbanOffline(ctx context.Context, path string, fw firewall.Firewall, addr netip.Addr) ([]Ban, error) {
	a, err := normalizeAddr(addr)
	if err != nil {
		return nil, err
	}
	lock, err := lockState(path)
	if err != nil {
		return nil, fmt.Errorf("bans: %w", err)
	}
	defer lock.release()
	st, err := ReadState(path)
	if err != nil {
		return nil, fmt.Errorf("bans: %w", err)
	}
	var gone []Ban
	for _, b := range st.Bans {
		if n, err := normalizeBanPrefix(b.Prefix); err == nil && n.Contains(a) {
			gone = append(gone, b)
		}
	}
	if len(gone) > 0 {
		if st.Version != StateVersion {
			if _, _, err := st.Upgrade(ctx, fw); err != nil {
				return nil, fmt.Errorf("bans: %w", err)
			}
			kept := slices.DeleteFunc(st.Bans, func(b Ban) bool { return slices.Contains(gone, b) })
			if _, err := writeState(path, kept, st.Incidents); err != nil {
				return nil, fmt.Errorf("bans: %w", err)
			}
		} else {
			j := newJournal(path)
			recs := make([]record, len(gone))
			for i := range gone {
				recs[i] = record{Lift: &gone[i].Prefix}
			}
			err := j.append(recs)
			j.close()
			if err != nil {
				return nil, fmt.Errorf("bans: %w", err)
			}
		}
	}
	ps := []netip.Prefix{single(a)}
	for _, b := range gone {
		if n, err := normalizeBanPrefix(b.Prefix); err == nil && n != single(a) {
			ps = append(ps, n)
		}
	}
	if err := fw.Unblock(ctx, ps...); err != nil {
		return gone, fmt.Errorf("bans: unblock %s: %w", a, err)
	}
	if len(gone) == 0 {
		return nil, fmt.Errorf("bans: %w: %s", ErrNotBanned, a)
	}
	return gone, nil
}

// EditIncidentsOffline changes the incident book's part of the state file
// while no daemon runs (`guard release`): it takes the state file's lock
// (ErrLocked if the daemon holds it), reads the file and its journal,
// calls edit with its incidents (nil when it has none) and, when edit
// returns no error, records what edit returned (a JSON array) in the
// journal, the bans unchanged. An error of edit is returned and nothing is
// written. A corrupt file is reported and left in place; a version 1 file,
// which holds no incidents, is never written here (its bans need the
// firewall's evidence to migrate): edit is called with nil and what it
// returns is refused.
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
	j := newJournal(path)
	defer j.close()
	if err := j.append([]record{{Incidents: compactJSON(raw)}}); err != nil {
		return fmt.Errorf("bans: %w", err)
	}
	return nil
}
