package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/notify/message"
	"github.com/astguard/astguard/internal/policy"
	"github.com/astguard/astguard/internal/testenv"
)

// hook is an httptest receiver: it answers each POST with the next of its
// statuses (200 once they run out), and keeps what it got.
type hook struct {
	srv      *httptest.Server
	statuses []int
	hang     chan struct{} // while open, every request waits (a receiver that hangs)

	mu    sync.Mutex
	hits  int
	reqs  []*http.Request
	posts [][]byte
}

func newHook(t *testing.T, statuses ...int) *hook {
	h := &hook{statuses: statuses}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		status := http.StatusOK
		if h.hits < len(h.statuses) {
			status = h.statuses[h.hits]
		}
		h.hits++
		h.reqs = append(h.reqs, r)
		h.posts = append(h.posts, body)
		hang := h.hang
		h.mu.Unlock()
		if hang != nil {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(func() {
		h.mu.Lock()
		if h.hang != nil {
			close(h.hang)
			h.hang = nil
		}
		h.mu.Unlock()
		h.srv.Close()
	})
	return h
}

func (h *hook) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hits
}

// webhookConfig is a [notify] table posting to h.
func webhookConfig(h *hook) config.Notify {
	c := testConfig()
	c.Webhook.URL = h.srv.URL + "/hooks/T0001/secret-token"
	return c
}

// Each body is signed: the receiver recomputes HMAC-SHA256 of the body
// with the shared key and finds the header's value.
func TestWebhookSignature(t *testing.T) {
	t.Parallel()
	h := newHook(t)
	cfg := webhookConfig(h)
	cfg.Webhook.HMACKey = "shared-key-0123456789"
	senders, err := Senders(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, cfg, policy.Enforce, nil, senders...)
	id := f.alert("200", t0, "0011442079460000")
	testenv.WaitFor(t, "4 posts", 10*time.Second, func() bool { return h.count() >= 4 })
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, body := range h.posts {
		mac := hmac.New(sha256.New, []byte("shared-key-0123456789"))
		mac.Write(body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		r := h.reqs[i]
		if got := r.Header.Get("X-Astguard-Signature"); !hmac.Equal([]byte(got), []byte(want)) {
			t.Fatalf("post %d: signature %q, want %q", i, got, want)
		}
		if r.Header.Get("Content-Type") != "application/json" || r.URL.Path != "/hooks/T0001/secret-token" {
			t.Fatalf("post %d: %s %s", i, r.Header.Get("Content-Type"), r.URL.Path)
		}
		if strings.Contains(string(body), "shared-key") {
			t.Fatal("the key is in the body")
		}
	}
	var m message.Message
	if err := json.Unmarshal(h.posts[0], &m); err != nil {
		t.Fatal(err)
	}
	if m.Kind != message.KindIncident || m.Event != message.EventOpened || m.Incident.ID != id || m.Incident.Numbers[0] != "0011442079460000" ||
		h.reqs[0].Header.Get(EventHeader) != "opened" {
		t.Fatalf("first post: %+v", m)
	}
}

// A 500 is tried again after the backoff; the receiver gets the message
// once it answers 200.
func TestWebhookRetriesOn500(t *testing.T) {
	t.Parallel()
	h := newHook(t, 500, 503)
	cfg := webhookConfig(h)
	n, err := New(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	res := n.Test(t.Context())
	if len(res) != 1 || res[0].Err != nil || res[0].Where != h.srv.URL {
		t.Fatalf("Test: %+v", res)
	}
	if h.count() != 3 {
		t.Fatalf("%d attempts, want 3", h.count())
	}
	if s := n.Stats().Senders[0]; s.Sent != 1 || s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// It gives up after the configured attempts, counts the failure and says
// why, never with the URL's path (where some services put a token).
func TestWebhookGivesUp(t *testing.T) {
	t.Parallel()
	h := newHook(t, 500, 500, 500, 500, 500)
	cfg := webhookConfig(h)
	cfg.Webhook.Attempts = 4
	n, err := New(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	res := n.Test(t.Context())
	if len(res) != 1 || res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "500 Internal Server Error") ||
		strings.Contains(res[0].Err.Error(), "secret-token") {
		t.Fatalf("Test: %+v", res)
	}
	if h.count() != 4 {
		t.Fatalf("%d attempts, want 4", h.count())
	}
	s := n.Stats().Senders[0]
	if s.Failed != 1 || s.Sent != 0 || !strings.Contains(s.LastError, "500") {
		t.Fatalf("stats %+v", s)
	}
}

// A 4xx other than 408 and 429 is not tried again.
func TestWebhookNoRetryOn400(t *testing.T) {
	t.Parallel()
	h := newHook(t, 400, 200)
	n, err := New(Options{Config: webhookConfig(h)})
	if err != nil {
		t.Fatal(err)
	}
	if res := n.Test(t.Context()); res[0].Err == nil || !isPermanent(res[0].Err) || h.count() != 1 {
		t.Fatalf("Test: %+v after %d attempts", res, h.count())
	}
}

// A receiver that hangs blocks nothing: the book's calls (the detector
// loop's and the responder's) return, its queue drops and counts what does
// not fit, and /healthz-worthy counts say so.
func TestWebhookHangingReceiver(t *testing.T) {
	t.Parallel()
	h := newHook(t)
	h.hang = make(chan struct{})
	cfg := webhookConfig(h)
	cfg.QueueSize = 2
	cfg.Webhook.Timeout = config.Duration(time.Hour)
	senders, err := Senders(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, cfg, policy.Enforce, nil, senders...)
	var decided atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			f.alert(ext(i), t0) // Decide, then an Outcome for each action
			decided.Add(1)
		}
	}()
	testenv.WaitFor(t, "every alert decided and carried out", 30*time.Second, func() bool { return decided.Load() == 50 })
	<-done
	testenv.WaitFor(t, "drops counted", 10*time.Second, func() bool {
		s := f.n.Stats()
		return s.EventsDropped+s.Senders[0].Dropped > 0
	})
	// One request is in the receiver's hands, the rest wait or were
	// dropped: the sender makes one request at a time.
	testenv.WaitFor(t, "the request to the receiver", 10*time.Second, func() bool { return h.count() >= 1 })
	if got := h.count(); got != 1 {
		t.Fatalf("%d requests reached the hung receiver, want 1", got)
	}
}

// A JSON body template gets every value escaped for JSON: quotes and CR
// LF in a dialled number leave the body valid, and the value reads back
// as cleaned.
func TestWebhookTemplate(t *testing.T) {
	t.Parallel()
	h := newHook(t)
	cfg := webhookConfig(h)
	cfg.Webhook.BodyTemplate = `{"text": "{{.Title}}", "numbers": "{{join .Incident.Numbers ", "}}", "severity": "{{.Severity}}"}`
	senders, err := Senders(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, cfg, policy.Enforce, nil, senders...)
	f.result = policy.None
	f.alert("200", t0, "0044\r\n\"}, \"x\": \"", `00"44\`)
	testenv.WaitFor(t, "the post", 10*time.Second, func() bool { return h.count() >= 1 })
	h.mu.Lock()
	body := h.posts[0]
	h.mu.Unlock()
	var got map[string]string
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if want := `0044\r\n"}, "x": ", 00"44\`; got["numbers"] != want || len(got) != 3 || got["severity"] != "critical" ||
		!strings.HasPrefix(got["text"], "incident ") {
		t.Fatalf("body %s: numbers %q", body, got["numbers"])
	}
}
