package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/policy"
	"github.com/astguard/astguard/internal/testenv"
)

// fakeAM is an httptest server that takes alerts as Alertmanager's API v2
// does and keeps every POST.
type fakeAM struct {
	srv *httptest.Server

	mu    sync.Mutex
	posts [][]amAlert
}

func newFakeAM(t *testing.T) *fakeAM {
	f := &fakeAM{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var alerts []amAlert
		if r.Method != http.MethodPost || r.URL.Path != "/api/v2/alerts" || json.NewDecoder(r.Body).Decode(&alerts) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.posts = append(f.posts, alerts)
		f.mu.Unlock()
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// sender is an Alertmanager sender of the default settings to f.
func (f *fakeAM) sender(*testing.T) *alertmanager {
	c := config.Default().Notify.Alertmanager
	c.URL = f.srv.URL
	return newAlertmanager(&c)
}

// incidents returns the last alert posted of each incident.
func (f *fakeAM) incidents() map[string]amAlert {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]amAlert)
	for _, p := range f.posts {
		for _, a := range p {
			if id := a.Annotations["incident"]; id != "" {
				out[id] = a
			}
		}
	}
	return out
}

// The alert of an open incident is sent again every resend interval, each
// time ending 4 intervals later; its close sends it with endsAt, once.
func TestAlertmanagerResendsAndEnds(t *testing.T) {
	t.Parallel()
	fake := newFakeAM(t)
	s := fake.sender(t)
	s.resend = 100 * time.Millisecond
	f := start(t, testConfig(), policy.Enforce, nil, s)
	id := f.alert("200", t0)
	var first amAlert
	testenv.WaitFor(t, "the alert", 10*time.Second, func() bool {
		first = fake.incidents()[id]
		return first.Labels != nil
	})
	if first.Labels["alertname"] != AlertIncident || first.Labels["extension"] != "SIP/200" || first.Labels["rule"] != "call_rate" ||
		first.Labels["severity"] != "critical" || first.Labels["instance"] != "pbx-test" || !first.StartsAt.Equal(t0) || !first.EndsAt.After(time.Now()) {
		t.Fatalf("alert: %+v", first)
	}
	testenv.WaitFor(t, "the alert sent again", 10*time.Second, func() bool { return fake.incidents()[id].EndsAt.After(first.EndsAt) })

	closedAt := t0.Add(time.Minute)
	if _, err := f.book.Release(policy.ExtensionKey(1, "200"), closedAt); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the alert ended", 10*time.Second, func() bool { return fake.incidents()[id].EndsAt.Equal(closedAt) })
	// Ended, it is not sent again: a later alert's POSTs do not hold it.
	fake.mu.Lock()
	n := len(fake.posts)
	fake.mu.Unlock()
	other := f.alert("201", t0)
	testenv.WaitFor(t, "another incident's alert", 10*time.Second, func() bool { return fake.incidents()[other].Labels != nil })
	fake.mu.Lock()
	defer fake.mu.Unlock()
	for _, p := range fake.posts[n:] {
		for _, a := range p {
			if a.Annotations["incident"] == id {
				t.Fatalf("the ended alert was sent again: %+v", a)
			}
		}
	}
}

// The alertmanager the package's tests share (started once, stopped by
// TestMain).
var realAM struct {
	once sync.Once
	url  string
	cmd  *exec.Cmd
	dir  string
	err  error
}

// alertmanagerURL starts Debian's prometheus-alertmanager on loopback, on
// a free port, with a throwaway configuration and storage, once, and
// returns its address.
func alertmanagerURL(t *testing.T) string {
	t.Helper()
	testenv.RequireCommand(t, "prometheus-alertmanager")
	realAM.once.Do(func() { realAM.url, realAM.err = startAlertmanager() })
	if realAM.err != nil {
		t.Fatal(realAM.err)
	}
	return realAM.url
}

const amConfig = `route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
`

func startAlertmanager() (string, error) {
	dir, err := os.MkdirTemp("", "astguard-alertmanager-")
	if err != nil {
		return "", err
	}
	realAM.dir = dir
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(amConfig), 0o600); err != nil {
		return "", err
	}
	var lastErr error
	for range 3 { // a free port can be taken between the look and the start
		addr, err := freePort()
		if err != nil {
			return "", err
		}
		cmd := exec.Command("prometheus-alertmanager", "--config.file="+cfg, "--storage.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr, "--cluster.listen-address=", "--log.level=warn")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return "", err
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		url := "http://" + addr
		if err := waitReady(url, exited); err != nil {
			_ = cmd.Process.Kill()
			lastErr = fmt.Errorf("prometheus-alertmanager: %w: %s", err, stderr.String())
			continue
		}
		realAM.cmd = cmd
		return url, nil
	}
	return "", lastErr
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitReady polls url's /-/ready until it answers 200, the process ends,
// or 30 s pass.
func waitReady(url string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		if resp, err := http.Get(url + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("not ready after 30 s")
}

func stopAlertmanager() {
	if realAM.cmd != nil {
		_ = realAM.cmd.Process.Kill()
	}
	if realAM.dir != "" {
		_ = os.RemoveAll(realAM.dir)
	}
}

// gettableAlert is an alert as GET /api/v2/alerts answers.
type gettableAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	Status      struct {
		State string `json:"state"`
	} `json:"status"`
}

// amAlerts returns the alerts Alertmanager at url shows for incident id.
func amAlerts(t *testing.T, url, id string) []gettableAlert {
	t.Helper()
	resp, err := http.Get(url + "/api/v2/alerts?filter=alertname%3D%22" + AlertIncident + "%22")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all []gettableAlert
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatal(err)
	}
	var out []gettableAlert
	for _, a := range all {
		if a.Annotations["incident"] == id {
			out = append(out, a)
		}
	}
	return out
}

// Against a real Alertmanager: the incident's alert is listed by GET
// /api/v2/alerts while the incident is open, with its labels, and is
// resolved (no longer listed) once it closes, long before it would expire.
func TestAlertmanagerReal(t *testing.T) {
	t.Parallel()
	url := alertmanagerURL(t)
	cfg := testConfig()
	cfg.Alertmanager.URL = url
	cfg.Webhook.URL = ""
	senders, err := Senders(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, cfg, policy.Enforce, nil, senders...)
	name := fmt.Sprintf("am%d", time.Now().UnixNano()%1e9) // its own extension: the server is shared
	id := f.alert(name, t0, "0011442079460000")
	var got []gettableAlert
	testenv.WaitFor(t, "the alert in Alertmanager", 30*time.Second, func() bool {
		got = amAlerts(t, url, id)
		return len(got) == 1
	})
	a := got[0]
	if a.Labels["alertname"] != AlertIncident || a.Labels["extension"] != "SIP/"+name || a.Labels["rule"] != "call_rate" ||
		a.Labels["severity"] != "critical" || a.Labels["instance"] != "pbx-test" || a.Status.State != "active" {
		t.Fatalf("alert: %+v", a)
	}
	if a.Annotations["numbers"] != "0011442079460000" || !strings.HasPrefix(a.Annotations["summary"], "incident "+id) ||
		a.EndsAt.Before(time.Now().Add(time.Minute)) {
		t.Fatalf("alert: %+v", a)
	}
	if _, err := f.book.Release(policy.ExtensionKey(1, name), time.Now()); err != nil {
		t.Fatal(err)
	}
	// Resolved: Alertmanager lists only the alerts that have not ended.
	testenv.WaitFor(t, "the alert resolved", 30*time.Second, func() bool { return len(amAlerts(t, url, id)) == 0 })
}

// guard notify-test's alert: sent, listed, and ending by itself.
func TestAlertmanagerTestAlert(t *testing.T) {
	t.Parallel()
	url := alertmanagerURL(t)
	cfg := testConfig()
	cfg.Alertmanager.URL = url
	cfg.Webhook.URL = ""
	cfg.Instance = fmt.Sprintf("test%d", time.Now().UnixNano()%1e9)
	n, err := New(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	res := n.Test(t.Context())
	if len(res) != 1 || res[0].Err != nil || res[0].Sender != nameAlertmanager {
		t.Fatalf("Test: %+v", res)
	}
	resp, err := http.Get(url + "/api/v2/alerts?filter=alertname%3D%22" + AlertTest + "%22&filter=instance%3D%22" + cfg.Instance + "%22")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all []gettableAlert
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil || len(all) != 1 || !all[0].EndsAt.After(time.Now()) {
		t.Fatalf("test alert: %+v, %v", all, err)
	}
}
