package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The notifier's counts are exported by sender and result, and shown in
// /healthz's body without making it unhealthy.
func TestNotifyCounts(t *testing.T) {
	drop := time.Date(2026, 11, 30, 1, 51, 0, 0, time.UTC)
	stats := NotifyStats{EventsDropped: 2, LastDrop: drop, Senders: []SenderStats{
		{Name: "webhook", Sent: 5, Failed: 1, Dropped: 3, LastError: "POST http://hooks: 500 Internal Server Error", LastErrorTime: drop},
		{Name: "email", Sent: 7},
	}}
	m := New(Options{Notify: func() NotifyStats { return stats }, LastEvent: time.Now, SilenceAlarm: time.Hour})
	want := `# HELP astguard_notification_events_dropped_total Incident and trouble events the notifier dropped because its queue was full: no message was made of them.
# TYPE astguard_notification_events_dropped_total counter
astguard_notification_events_dropped_total 2
# HELP astguard_notifications_total Notifications by sender and result: sent, failed (every attempt failed), dropped (the sender's queue was full).
# TYPE astguard_notifications_total counter
astguard_notifications_total{result="dropped",sender="email"} 0
astguard_notifications_total{result="dropped",sender="webhook"} 3
astguard_notifications_total{result="failed",sender="email"} 0
astguard_notifications_total{result="failed",sender="webhook"} 1
astguard_notifications_total{result="sent",sender="email"} 7
astguard_notifications_total{result="sent",sender="webhook"} 5
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), NameNotifications, NameNotificationsLost); err != nil {
		t.Fatal(err)
	}
	h := m.Health()
	n := h.Notifications
	if !h.OK() || n == nil || n.EventsDropped != 2 || !n.LastDrop.Equal(drop) || n.Senders["webhook"].Dropped != 3 ||
		n.Senders["webhook"].LastError == "" || n.Senders["email"].Sent != 7 || n.Senders["email"].LastErrorTime != nil {
		t.Fatalf("health %+v, notifications %+v", h, n)
	}
	if New(Options{}).Health().Notifications != nil {
		t.Fatal("notifications shown without a notifier")
	}
}
