package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/notify/message"
)

// The alertnames the guard gives Alertmanager.
const (
	AlertIncident = "AstguardIncident"         // an incident, firing while it is open
	AlertAMIDown  = "AstguardAMIDown"          // an AMI session down for trouble_after
	AlertFirewall = "AstguardFirewallUnusable" // the firewall failing for trouble_after
	AlertTest     = "AstguardNotifyTest"       // guard notify-test
)

// testAlertFor is how long the alert of guard notify-test fires: long
// enough for Alertmanager's group_wait, then it resolves by itself.
const testAlertFor = 5 * time.Minute

// alertmanager keeps Alertmanager told: each open incident (and each
// trouble) is an alert, POSTed to /api/v2/alerts when it changes and
// again every resend interval while it lasts, each time saying it ends 4
// intervals later (so a guard that stops sending lets it resolve), and a
// last time with endsAt when it closes.
type alertmanager struct {
	url    string // .../api/v2/alerts
	host   string
	resend time.Duration
	client *http.Client
	outlet *outlet // its queue and counts (set by New)

	// run's own state: the alerts by key.
	alerts map[string]*amState
}

// amAlert is an alert as Alertmanager's API v2 takes it.
type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt,omitzero"`
}

// amState is one alert and whether Alertmanager has it as it is.
type amState struct {
	alert amAlert
	ended bool // closed or recovered: sent once more with its endsAt, then forgotten
	dirty bool
}

func newAlertmanager(c *config.Alertmanager) *alertmanager {
	u, _ := url.Parse(c.URL) // valid: checked by the configuration
	return &alertmanager{
		url:    strings.TrimSuffix(c.URL, "/") + "/api/v2/alerts",
		host:   u.Scheme + "://" + u.Host,
		resend: time.Duration(c.ResendInterval),
		client: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		alerts: make(map[string]*amState),
	}
}

func (a *alertmanager) Name() string     { return nameAlertmanager }
func (a *alertmanager) describe() string { return a.host }

// enqueue queues m for run.
func (a *alertmanager) enqueue(m *message.Message, log *zerolog.Logger) { a.outlet.enqueue(m, log) }

// Send POSTs the alert of m alone (guard notify-test).
func (a *alertmanager) Send(ctx context.Context, m *message.Message) error {
	_, al, _ := a.alertOf(m, time.Now())
	return a.post(ctx, []amAlert{al})
}

// alertOf is the alert of m, its key, and whether it has ended.
func (a *alertmanager) alertOf(m *message.Message, now time.Time) (string, amAlert, bool) {
	al := amAlert{
		Labels:      map[string]string{"instance": m.Instance},
		Annotations: map[string]string{"summary": m.Title, "description": m.Text, "mode": m.Mode},
		StartsAt:    m.Time,
	}
	fire := now.Add(4 * a.resend)
	var key string
	ended := false
	switch {
	case m.Kind == message.KindIncident:
		inc := m.Incident
		key = "incident/" + inc.ID
		al.Labels["alertname"], al.Labels["rule"], al.Labels["severity"] = AlertIncident, inc.Rule, inc.Severity
		if inc.Extension != "" {
			al.Labels["extension"] = inc.Extension
		} else {
			al.Labels["ip"] = inc.Address
		}
		al.Annotations["incident"] = inc.ID
		al.Annotations["sources"] = strings.Join(inc.Sources, ", ")
		al.Annotations["numbers"] = strings.Join(inc.Numbers, ", ")
		var acts []string
		for _, x := range inc.Actions {
			acts = append(acts, x.Action+" "+x.Result)
		}
		al.Annotations["actions"] = strings.Join(acts, ", ")
		if inc.SecretsFile != "" {
			al.Annotations["secrets_file"] = inc.SecretsFile
		}
		al.StartsAt, al.EndsAt = inc.Opened, fire
		if inc.State != "open" {
			al.EndsAt, ended = inc.Closed, true
		}
	case m.Kind == message.KindTrouble:
		t := m.Trouble
		key = "trouble/" + t.What + "/" + t.Name
		al.Labels["severity"] = m.Severity
		if t.What == "ami" {
			al.Labels["alertname"], al.Labels["session"] = AlertAMIDown, t.Name
		} else {
			al.Labels["alertname"] = AlertFirewall
		}
		al.StartsAt, al.EndsAt = t.Since, fire
		if !t.Down {
			al.EndsAt, ended = now, true
		}
	default: // a test
		key = "test"
		al.Labels["alertname"], al.Labels["severity"] = AlertTest, m.Severity
		al.EndsAt = now.Add(testAlertFor)
	}
	for k, v := range al.Annotations {
		if v == "" {
			delete(al.Annotations, k)
		}
	}
	return key, al, ended
}

// apply records m's alert as the one to send.
func (a *alertmanager) apply(m *message.Message, now time.Time) {
	key, al, ended := a.alertOf(m, now)
	if ended && a.alerts[key] == nil && m.Kind == message.KindTrouble {
		return // never told it started
	}
	a.alerts[key] = &amState{alert: al, ended: ended, dirty: true}
}

// run keeps Alertmanager told until ctx ends.
func (a *alertmanager) run(ctx context.Context, log *zerolog.Logger) {
	tick := time.NewTicker(a.resend)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	backoff := a.outlet.backoff
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-a.outlet.queue:
			now := time.Now()
			a.apply(m, now)
			for more := true; more; { // the whole backlog in one POST
				select {
				case m := <-a.outlet.queue:
					a.apply(m, now)
				default:
					more = false
				}
			}
		case <-tick.C:
			now := time.Now()
			for _, s := range a.alerts {
				if !s.ended {
					s.alert.EndsAt = now.Add(4 * a.resend)
					s.dirty = true
				}
			}
		case <-retry.C:
		}
		if err := a.flush(ctx, log); err != nil {
			retry.Reset(backoff)
			backoff = min(backoff*2, a.resend)
		} else {
			backoff = a.outlet.backoff
		}
	}
}

// flush POSTs every alert not sent as it is, at once.
func (a *alertmanager) flush(ctx context.Context, log *zerolog.Logger) error {
	var batch []amAlert
	for _, k := range sortedKeys(a.alerts) {
		if s := a.alerts[k]; s.dirty {
			batch = append(batch, s.alert)
		}
	}
	if len(batch) == 0 {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, a.outlet.timeout)
	err := a.post(pctx, batch)
	cancel()
	if err != nil {
		_ = a.outlet.result(err, &message.Message{Title: fmt.Sprintf("%d alerts", len(batch))}, log)
		return err
	}
	for k, s := range a.alerts {
		if s.dirty && s.ended {
			delete(a.alerts, k)
		}
		s.dirty = false
	}
	_ = a.outlet.result(nil, nil, log)
	return nil
}

// post sends alerts to Alertmanager once.
func (a *alertmanager) post(ctx context.Context, alerts []amAlert) error {
	body, err := json.Marshal(alerts)
	if err != nil {
		return Permanent(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(body))
	if err != nil {
		return Permanent(errors.New("the request cannot be made"))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "astguard")
	resp, err := a.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("POST %s: %w", a.host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err := statusError(a.host, resp.StatusCode); err != nil {
		if msg := strings.TrimSpace(string(b)); msg != "" {
			return fmt.Errorf("%w: %s", err, message.Clean(msg))
		}
		return err
	}
	return nil
}
