// Package metrics holds the guard's Prometheus metrics and its health check,
// served over HTTP as /metrics and /healthz when metrics.listen is set.
//
// Every label value comes from a short list fixed in the code (event kinds,
// rules, severities, actions, results, session names): nothing an attacker
// sends (extension names, numbers, addresses) ever becomes a label, so the
// number of series is bounded whatever the traffic.
//
// The methods the guard calls on its hot path (Event) touch one counter
// resolved at start, without a label lookup. All methods may be called on a
// nil *Metrics and then do nothing.
package metrics

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
)

// The metric names.
const (
	NameEvents         = "astguard_events_total"
	NameEventsDropped  = "astguard_events_dropped_total"
	NameEventsForged   = "astguard_events_forged_total"
	NameAMIRejected    = "astguard_ami_messages_rejected_total"
	NameLastEvent      = "astguard_last_event_timestamp_seconds"
	NameQueueDepth     = "astguard_queue_depth"
	NameQueueCapacity  = "astguard_queue_capacity"
	NameAlerts         = "astguard_alerts_total"
	NameActions        = "astguard_actions_total"
	NameActionDuration = "astguard_action_duration_seconds"
	NameAMIConnected   = "astguard_ami_connected"
	NameAMIConnects    = "astguard_ami_connects_total"
	NameAMITimeouts    = "astguard_ami_action_timeouts_total"
	NameBansActive     = "astguard_bans_active"
	NameTrackedKeys    = "astguard_tracked_keys"
	NameKeysEvicted    = "astguard_keys_evicted_total"
	NameKeysUntracked  = "astguard_keys_untracked_total"
)

// The results of an action, as the responder logs them.
const (
	ResultDone    = "done"
	ResultFailed  = "failed"
	ResultSkipped = "skipped"
	ResultWould   = "would"
)

// Actions and Results are the label values of astguard_actions_total that
// exist from the start (at 0).
var (
	Actions = []string{config.ActionHangup, config.ActionBlockIP, config.ActionRotateSecret}
	Results = []string{ResultDone, ResultFailed, ResultSkipped, ResultWould}
)

// otherSecurity is the type label of security events of a type the guard
// does not tell apart (ami.SecOther).
const otherSecurity = "Security"

// Session is what the metrics read of an AMI session.
type Session struct {
	Name string // the session label: "events", "urgent"
	// Status is the state of its link (logged in, why not, actions timing
	// out, logins so far).
	Status func() client.Status
	// ActionTimeouts counts its actions that got no reply in time.
	ActionTimeouts func() uint64
	// Essential sessions make /healthz unhealthy while they are down: the
	// guard is blind without its event session.
	Essential bool
}

func (s *Session) status() client.Status {
	if s.Status == nil {
		return client.Status{}
	}
	return s.Status()
}

// Options are what the metrics read from the guard. Nil funcs read as 0.
type Options struct {
	Sessions []Session
	// QueueLen is the number of events waiting for the detector; QueueCap
	// the queue's size.
	QueueLen func() int
	QueueCap int
	// Bans is the number of bans in force.
	Bans func() int
	// Malformed and Oversized count the AMI messages the reader rejected
	// and did not use: a line that is not a header, or a message over
	// 64 KiB.
	Malformed, Oversized func() uint64
	// LastEvent is when the last message arrived (zero: none yet).
	LastEvent func() time.Time
	// SilenceAlarm is how long without an event makes /healthz unhealthy.
	SilenceAlarm time.Duration
	// Now is the clock (nil: time.Now); tests inject their own.
	Now func() time.Time
	// Notify, when set, reads the notifier's counts: exported as
	// astguard_notifications_total and shown in /healthz.
	Notify func() NotifyStats
	// CrowdSec, when set, says how the link to CrowdSec does (/healthz).
	CrowdSec func() map[string]Upstream
}

// Metrics is the guard's registry and the state behind its health check.
type Metrics struct {
	reg   *prometheus.Registry
	opts  Options
	now   func() time.Time
	start time.Time

	silence atomic.Int64 // time.Duration

	// Resolved at start: one counter per value of the uint8 it is indexed
	// by, values without a name sharing the Unknown / Security counter.
	events   [256]prometheus.Counter // by ami.Kind
	security [256]prometheus.Counter // by ami.SecurityType
	alerts   [][3]prometheus.Counter // by detector.Rule, detector.Severity
	alertVec *prometheus.CounterVec
	actions  *prometheus.CounterVec
	duration *prometheus.HistogramVec

	dropped  atomic.Uint64
	lastDrop atomic.Int64 // Unix ns of the last drop (0: none)

	// The detector's figures, published by the loop that owns it.
	extensions, addresses atomic.Int64
	evicted, untracked    atomic.Uint64
	forged                atomic.Uint64
}

// New builds the registry: the guard's metrics, and the Go runtime's and
// the process's.
func New(opts Options) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), opts: opts, now: opts.Now}
	if m.now == nil {
		m.now = time.Now
	}
	m.start = m.now()
	m.silence.Store(int64(opts.SilenceAlarm))

	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	// Events by type.
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: NameEvents,
		Help: "AMI events the detector received, by type (the event name; Unknown: not used by the detector; Security: a security event of another type).",
	}, []string{"type"})
	unknown := events.WithLabelValues(ami.KindUnknown.String())
	for i := range m.events {
		m.events[i] = unknown
		if k := ami.Kind(i); k != ami.KindUnknown && k != ami.KindSecurity && k.String() != ami.Kind(255).String() {
			m.events[i] = events.WithLabelValues(k.String())
		}
	}
	other := events.WithLabelValues(otherSecurity)
	for i := range m.security {
		m.security[i] = other
		if s := ami.SecurityType(i); s != ami.SecOther && s.String() != ami.SecurityType(255).String() {
			m.security[i] = events.WithLabelValues(s.String())
		}
	}

	// Alerts by rule and severity.
	m.alertVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: NameAlerts,
		Help: "Alerts raised, by rule and severity.",
	}, []string{"rule", "severity"})
	m.alerts = make([][3]prometheus.Counter, 1)
	for r := detector.Rule(1); r.String() != detector.Rule(0).String(); r++ {
		var c [3]prometheus.Counter
		for _, s := range []detector.Severity{detector.Warning, detector.Critical} {
			c[s] = m.alertVec.WithLabelValues(r.String(), s.String())
		}
		m.alerts = append(m.alerts, c)
	}

	// Actions by kind and result, and how long they took.
	m.actions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: NameActions,
		Help: "Actions taken on alerts, by action and result (would: observe mode, nothing done).",
	}, []string{"action", "result"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    NameActionDuration,
		Help:    "Time from the start of an action to its outcome (done, failed or skipped), retries included.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"action"})
	for _, a := range Actions {
		for _, r := range Results {
			m.actions.WithLabelValues(a, r)
		}
		m.duration.WithLabelValues(a)
	}

	m.reg.MustRegister(events, m.alertVec, m.actions, m.duration,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: NameEventsDropped,
			Help: "Events dropped because the queue to the detector was full: the guard did not see them.",
		}, func() float64 { return float64(m.dropped.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: NameEventsForged,
			Help: "Events not used because they repeat a header the guard attributes by (a forged header in a caller name or user name).",
		}, func() float64 { return float64(m.forged.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        NameAMIRejected,
			Help:        "AMI messages rejected by the reader and not used, by reason (malformed: a line that is not a header; oversized: over 64 KiB).",
			ConstLabels: prometheus.Labels{"reason": "malformed"},
		}, func() float64 { return float64(call(opts.Malformed)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        NameAMIRejected,
			Help:        "AMI messages rejected by the reader and not used, by reason (malformed: a line that is not a header; oversized: over 64 KiB).",
			ConstLabels: prometheus.Labels{"reason": "oversized"},
		}, func() float64 { return float64(call(opts.Oversized)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: NameLastEvent,
			Help: "Unix time the last AMI event arrived (0: none since the start).",
		}, func() float64 {
			t := m.lastEvent()
			if t.IsZero() {
				return 0
			}
			return float64(t.UnixNano()) / 1e9
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: NameQueueDepth,
			Help: "Events waiting in the queue to the detector.",
		}, func() float64 { return float64(call(opts.QueueLen)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: NameQueueCapacity,
			Help: "Size of the queue to the detector (ami.queue_size).",
		}, func() float64 { return float64(opts.QueueCap) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: NameBansActive,
			Help: "Addresses banned now.",
		}, func() float64 { return float64(call(opts.Bans)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        NameTrackedKeys,
			Help:        "Keys the detector tracks now, by kind (updated every second).",
			ConstLabels: prometheus.Labels{"kind": "extension"},
		}, func() float64 { return float64(m.extensions.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        NameTrackedKeys,
			Help:        "Keys the detector tracks now, by kind (updated every second).",
			ConstLabels: prometheus.Labels{"kind": "address"},
		}, func() float64 { return float64(m.addresses.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: NameKeysEvicted,
			Help: "Idle keys the detector dropped because max_extensions or max_addresses was reached.",
		}, func() float64 { return float64(m.evicted.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: NameKeysUntracked,
			Help: "New keys the detector could not track: the cap was full of incidents in progress.",
		}, func() float64 { return float64(m.untracked.Load()) }),
	)
	if opts.Notify != nil {
		m.reg.MustRegister(newNotifyCollector(opts.Notify))
	}
	for _, s := range opts.Sessions {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name:        NameAMIConnected,
				Help:        "1 while the AMI session is logged in, else 0.",
				ConstLabels: prometheus.Labels{"session": s.Name},
			}, func() float64 {
				if s.status().Up() {
					return 1
				}
				return 0
			}),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        NameAMIConnects,
				Help:        "AMI logins of the session, the first included: more than 1 means it reconnected.",
				ConstLabels: prometheus.Labels{"session": s.Name},
			}, func() float64 { return float64(s.status().Connects) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        NameAMITimeouts,
				Help:        "Actions of the AMI session (keepalive pings included) that got no reply in time.",
				ConstLabels: prometheus.Labels{"session": s.Name},
			}, func() float64 { return float64(call(s.ActionTimeouts)) }),
		)
	}
	return m
}

func call[T int | uint64](f func() T) T {
	if f == nil {
		return 0
	}
	return f()
}

// Registry returns the registry (tests, more collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Event counts an event the detector received: its kind, and for security
// events their type. A message it could not decode counts as KindUnknown.
func (m *Metrics) Event(k ami.Kind, s ami.SecurityType) {
	if m == nil {
		return
	}
	if k == ami.KindSecurity {
		m.security[s].Inc()
		return
	}
	m.events[k].Inc()
}

// Alert counts an alert.
func (m *Metrics) Alert(r detector.Rule, s detector.Severity) {
	if m == nil {
		return
	}
	if int(r) < len(m.alerts) && r > 0 && (s == detector.Warning || s == detector.Critical) {
		m.alerts[r][s].Inc()
		return
	}
	// A rule or severity without a name: counted, under "unknown".
	m.alertVec.WithLabelValues(r.String(), s.String()).Inc()
}

// Action counts an action's outcome; the time it took is observed unless
// nothing was done (result would). action and result are the responder's
// constants, never anything taken from the traffic.
func (m *Metrics) Action(action, result string, took time.Duration) {
	if m == nil {
		return
	}
	m.actions.WithLabelValues(action, result).Inc()
	if result != ResultWould {
		m.duration.WithLabelValues(action).Observe(took.Seconds())
	}
}

// Dropped is told the running count of events dropped because the queue
// was full. It never blocks (it runs on the AMI reader's goroutine).
func (m *Metrics) Dropped(n uint64) {
	if m == nil {
		return
	}
	for {
		old := m.dropped.Load()
		if n <= old || m.dropped.CompareAndSwap(old, n) {
			break
		}
	}
	m.lastDrop.Store(m.now().UnixNano())
}

// SetDetector publishes the detector's figures. Only the goroutine that
// owns the detector reads its Stats; it calls this periodically.
func (m *Metrics) SetDetector(s detector.Stats) {
	if m == nil {
		return
	}
	m.extensions.Store(int64(s.Extensions))
	m.addresses.Store(int64(s.Addresses))
	m.evicted.Store(s.Evicted)
	m.untracked.Store(s.Untracked)
	m.forged.Store(s.Forged)
}

// SetSilenceAlarm changes how long without an event makes /healthz
// unhealthy (a configuration reload).
func (m *Metrics) SetSilenceAlarm(d time.Duration) {
	if m == nil {
		return
	}
	m.silence.Store(int64(d))
}

func (m *Metrics) lastEvent() time.Time {
	if m.opts.LastEvent == nil {
		return time.Time{}
	}
	return m.opts.LastEvent()
}

// seconds rounds a duration to milliseconds, in seconds, for JSON.
func seconds(d time.Duration) float64 {
	return math.Round(d.Seconds()*1000) / 1000
}
