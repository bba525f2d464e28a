// Package detector keeps sliding windows of calls and security events per
// extension and per source address, driven by event time, and says what it
// saw as Alerts. It decides nothing about what to do: that is the policy's job.
//
// A Detector is not safe for concurrent use: one goroutine feeds it events.
package detector

import (
	"net/netip"
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
