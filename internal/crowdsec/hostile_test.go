package crowdsec

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/crowdsec/cstest"
)

// Answers no Local API gives, from a server standing in for it: JSON that
// breaks off, a body of 100 MB, decisions missing fields or holding what no
// rule can ban, and a field of the wrong type. Each is refused and counted;
// the pull goes on, and the one sound decision among them is applied.
func TestHostileAnswers(t *testing.T) {
	t.Parallel()
	var written atomic.Int64
	var served atomic.Int32
	answers := []func(w http.ResponseWriter){
		func(w http.ResponseWriter) { io.WriteString(w, `{"new": [{"id": 1, "value": "203.0.`) },
		func(w http.ResponseWriter) {
			// 100 MB: a string that never ends within the guard's limit.
			io.WriteString(w, `{"new":[{"id":2,"scenario":"`)
			chunk := []byte(strings.Repeat("a", 1<<20))
			for range 100 {
				n, err := w.Write(chunk)
				written.Add(int64(n))
				if err != nil {
					return
				}
			}
			io.WriteString(w, `"}]}`)
		},
		func(w http.ResponseWriter) {
			d := func(id int, scope, value, duration, typ string) string {
				return fmt.Sprintf(`{"id":%d,"origin":"cscli","scenario":"t","scope":%q,"value":%q,"duration":%q,"type":%q}`, id, scope, value, duration, typ)
			}
			io.WriteString(w, `{"new":[null,`+
				`{"id":3,"scope":"Ip","value":"203.0.113.3"},`+ // no duration, origin ...
				d(4, "Ip", "not-an-ip", "1h", "ban")+","+
				d(5, "Ip", "fe80::1%eth0", "1h", "ban")+","+
				d(6, "Ip", "203.0.113.6", "forever", "ban")+","+
				d(7, "Range", "224.0.0.0/24", "1h", "ban")+","+
				d(8, "Ip", "0.0.0.0", "1h", "ban")+","+
				d(9, "Country", "FR", "1h", "ban")+","+
				d(10, "Ip", "203.0.113.10", "-5s", "ban")+","+
				d(11, "Ip", "203.0.113.11", "1h", "ban")+
				`],"deleted":[null,{"id":12}]}`)
		},
		func(w http.ResponseWriter) { io.WriteString(w, `{"new":[{"id":"thirteen"}]}`) },
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/decisions/stream" || r.Header.Get("X-Api-Key") != "the-key" {
			http.Error(w, `{"message":"no"}`, http.StatusForbidden)
			return
		}
		i := int(served.Add(1)) - 1
		w.Header().Set("Content-Type", "application/json")
		if i < len(answers) {
			answers[i](w)
			return
		}
		io.WriteString(w, `{"new":null,"deleted":null}`)
	}))
	defer srv.Close()

	s := startService(t, Options{URL: srv.URL, Pull: true, APIKey: "the-key"})
	waitFor(t, "every hostile answer and a sound one", func() bool { return served.Load() > int32(len(answers)) && s.Stats().Pulls >= 2 })
	st := s.Stats()
	want := map[Reason]uint64{
		RefusedOversized: 1,
		// the broken answer and the wrong type; then null, missing
		// fields, no address, a zone, no duration, multicast, unspecified
		RefusedMalformed: 2 + 7,
	}
	for r, n := range want {
		if st.Refused[r] != n {
			t.Errorf("refused %s: %d, want %d (stats %+v)", r, st.Refused[r], n, st)
		}
	}
	if st.Decisions[Applied] != 1 || st.Decisions[Ignored] != 2 {
		t.Errorf("decisions %+v, want 1 applied and 2 ignored (a country, an expired one)", st.Decisions)
	}
	if got := s.bans.List(); len(got) != 1 || got[0].Prefix != single("203.0.113.11") {
		t.Errorf("bans %+v, want only 203.0.113.11", got)
	}
	if w := written.Load(); w >= 64<<20 {
		t.Errorf("the guard read on: the server wrote %d MiB of the 100", w>>20)
	}
	if p := s.Status()["pull"]; p.State != "up" || st.Outages["pull"] < 1 {
		t.Errorf("pull status %+v, outages %d; want up again after at least one outage", p, st.Outages["pull"])
	}
}

// The Local API going away never stops the guard: each part says once, at
// warn, that it fails, counts its failures, keeps the bans to push, and
// says at info when it works again; the bans kept are pushed then.
func TestOutageAndRecovery(t *testing.T) {
	t.Parallel()
	l := cstest.Shared(t)
	machine, pw := addMachine(t, l)
	px := cstest.StartProxy(t, l.Addr)
	s := startService(t, Options{URL: px.URL(), Push: true, Pull: true, MachineID: machine, Password: pw, APIKey: addBouncer(t, l),
		ScenariosContaining: []string{cstest.Name("none")}})
	waitFor(t, "both parts up", func() bool {
		st := s.Status()
		return st["push"].State == "up" && st["pull"].State == "up"
	})

	px.SetDown(true)
	attacker := randomAddr(t, "203.0.113.0/24")
	b, err := s.bans.Ban(t.Context(), bans.Request{Addr: attacker, TTL: time.Hour, Reason: "during the outage", Rule: "failed_probes"})
	if err != nil {
		t.Fatal(err)
	}
	s.Banned(b)
	waitFor(t, "both parts down, the pull failing three times", func() bool {
		st := s.Status()
		return st["push"].State == "down" && st["pull"].State == "down" && st["pull"].Failures >= 3
	})
	if st := s.Status()["pull"]; st.Problem != ProblemUnreachable || st.Detail == "" {
		t.Errorf("pull status %+v, want unreachable with its cause", st)
	}
	if st := s.Stats(); st.AlertsQueued != 1 || st.Outages["pull"] != 1 || st.Outages["push"] != 1 || st.Failed["pull"] < 3 {
		t.Errorf("stats during the outage %+v", st)
	}
	select {
	case <-s.done:
		t.Fatal("the service stopped during the outage")
	default:
	}

	px.SetDown(false)
	waitFor(t, "both parts up again and the ban pushed", func() bool {
		st := s.Status()
		return st["push"].State == "up" && st["pull"].State == "up" && s.Stats().AlertsSent == 1
	})
	if _, ok := lapiDecision(t, l, attacker.String()); !ok {
		t.Errorf("the ban kept during the outage is not in the Local API")
	}
	warns := s.logs.lines(t, "CrowdSec Local API failing: retrying with backoff; the guard goes on without it")
	again := s.logs.lines(t, "CrowdSec Local API works again")
	for _, api := range []string{"push", "pull"} {
		if n := countAPI(warns, api, "warn"); n != 1 {
			t.Errorf("%d warnings of the %s outage, want 1", n, api)
		}
		if n := countAPI(again, api, "info"); n != 1 {
			t.Errorf("%d lines of the %s recovery at info, want 1", n, api)
		}
	}
}

func countAPI(lines []map[string]any, api, level string) int {
	n := 0
	for _, l := range lines {
		if l["api"] == api && l["level"] == level {
			n++
		}
	}
	return n
}

// The machine's token: a refused one (401) is renewed at once and the
// push goes through; one about to expire is renewed before the next push.
// The password goes only into the login's body, never into the log.
func TestTokenRenewal(t *testing.T) {
	t.Parallel()
	var logins, pushes atomic.Int32
	var mu sync.Mutex
	var passwords []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/watchers/login":
			var req struct{ MachineID, Password string }
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			mu.Lock()
			passwords = append(passwords, req.Password)
			mu.Unlock()
			n := logins.Add(1)
			exp := time.Now().Add(time.Hour)
			if n == 2 {
				exp = time.Now().Add(30 * time.Second) // within the renewal margin
			}
			fmt.Fprintf(w, `{"code":200,"expire":%q,"token":"tok-%d"}`, exp.UTC().Format(time.RFC3339), n)
		case "/v1/alerts":
			if r.Header.Get("Authorization") == "Bearer tok-1" {
				http.Error(w, `{"message":"token refused"}`, http.StatusUnauthorized)
				return
			}
			pushes.Add(1)
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, `["1"]`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	s := startService(t, Options{URL: srv.URL, Push: true, MachineID: "m1", Password: "the-password"})
	waitFor(t, "the first login", func() bool { return s.Status()["push"].State == "up" })
	ban := func(a string) {
		b, err := s.bans.Ban(t.Context(), bans.Request{Addr: netip.MustParseAddr(a), TTL: time.Hour, Reason: "r", Rule: "auth_failures"})
		if err != nil {
			t.Fatal(err)
		}
		s.Banned(b)
	}
	ban("203.0.113.1")
	waitFor(t, "the first push", func() bool { return s.Stats().AlertsSent == 1 })
	if logins.Load() != 2 {
		t.Errorf("%d logins after a refused token, want 2", logins.Load())
	}
	ban("203.0.113.2")
	waitFor(t, "the second push", func() bool { return s.Stats().AlertsSent == 2 })
	if logins.Load() != 3 || pushes.Load() != 2 {
		t.Errorf("%d logins, %d pushes; want the token about to expire renewed before the second push", logins.Load(), pushes.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range passwords {
		if p != "the-password" {
			t.Errorf("a login sent password %q", p)
		}
	}
}

// A Local API (or whoever answers for it) that redirects the guard
// elsewhere gets no credential sent there: redirects are refused.
func TestRedirectRefused(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		io.WriteString(w, `{"new":[],"deleted":[]}`)
	}))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusFound)
	}))
	defer srv.Close()
	s := startService(t, Options{URL: srv.URL, Pull: true, APIKey: "the-key", Push: true, MachineID: "m1", Password: "the-password"})
	waitFor(t, "both parts failing twice", func() bool {
		st := s.Status()
		return st["pull"].Failures >= 2 && st["push"].Failures >= 2
	})
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("%d requests followed the redirect", n)
	}
	if p := s.Status()["pull"].Problem; p != ProblemServer {
		t.Errorf("pull problem %q, want %q", p, ProblemServer)
	}
}
