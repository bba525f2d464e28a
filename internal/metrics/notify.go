package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The names of the notifier's metrics, and the results of
// astguard_notifications_total.
const (
	NameNotifications     = "astguard_notifications_total"
	NameNotificationsLost = "astguard_notification_events_dropped_total"
	NotifySent            = "sent"
	NotifyFailed          = "failed"
	NotifyDropped         = "dropped"
)

// NotifyStats are the notifier's counts since the start (Options.Notify).
type NotifyStats struct {
	// EventsDropped counts the events lost because the notifier's queue
	// was full; LastDrop is when the last was.
	EventsDropped uint64
	LastDrop      time.Time
	Senders       []SenderStats
}

// SenderStats are one sender's counts.
type SenderStats struct {
	Name                  string // webhook, alertmanager, email
	Sent, Failed, Dropped uint64
	// LastError is the last delivery error (never a secret) and when.
	LastError     string
	LastErrorTime time.Time
}

// NotifyHealth is what /healthz shows of the notifications. Failed or
// dropped notifications never make the guard unhealthy: unhealthy means
// blind, and the guard sees and acts all the same.
type NotifyHealth struct {
	EventsDropped uint64                  `json:"events_dropped"`
	LastDrop      *time.Time              `json:"last_drop,omitempty"`
	Senders       map[string]SenderHealth `json:"senders"`
}

// SenderHealth is one sender in /healthz.
type SenderHealth struct {
	Sent          uint64     `json:"sent"`
	Failed        uint64     `json:"failed"`
	Dropped       uint64     `json:"dropped"`
	LastError     string     `json:"last_error,omitempty"`
	LastErrorTime *time.Time `json:"last_error_time,omitempty"`
}

func notifyHealth(s NotifyStats) *NotifyHealth {
	h := &NotifyHealth{EventsDropped: s.EventsDropped, Senders: make(map[string]SenderHealth, len(s.Senders))}
	if !s.LastDrop.IsZero() {
		t := s.LastDrop.UTC()
		h.LastDrop = &t
	}
	for _, x := range s.Senders {
		sh := SenderHealth{Sent: x.Sent, Failed: x.Failed, Dropped: x.Dropped, LastError: x.LastError}
		if !x.LastErrorTime.IsZero() {
			t := x.LastErrorTime.UTC()
			sh.LastErrorTime = &t
		}
		h.Senders[x.Name] = sh
	}
	return h
}

// notifyCollector exports NotifyStats, read once per scrape.
type notifyCollector struct {
	stats func() NotifyStats
	total *prometheus.Desc
	lost  *prometheus.Desc
}

func newNotifyCollector(stats func() NotifyStats) *notifyCollector {
	return &notifyCollector{
		stats: stats,
		total: prometheus.NewDesc(NameNotifications,
			"Notifications by sender and result: sent, failed (every attempt failed), dropped (the sender's queue was full).",
			[]string{"sender", "result"}, nil),
		lost: prometheus.NewDesc(NameNotificationsLost,
			"Incident and trouble events the notifier dropped because its queue was full: no message was made of them.", nil, nil),
	}
}

func (c *notifyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.total
	ch <- c.lost
}

func (c *notifyCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(s.EventsDropped))
	for _, x := range s.Senders {
		for _, r := range [...]struct {
			name string
			n    uint64
		}{{NotifySent, x.Sent}, {NotifyFailed, x.Failed}, {NotifyDropped, x.Dropped}} {
			ch <- prometheus.MustNewConstMetric(c.total, prometheus.CounterValue, float64(r.n), x.Name, r.name)
		}
	}
}
