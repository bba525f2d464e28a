package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/notify/message"
)

// The names of the senders.
const (
	nameWebhook      = "webhook"
	nameAlertmanager = "alertmanager"
	nameEmail        = "email"
)

// EventHeader names the header that carries the message's event
// ("opened", "digest", "ami_down" ...), so a receiver can route without
// reading the body.
const EventHeader = "X-Astguard-Event"

// webhook POSTs each message: the Message as JSON, or what the body
// template writes of it, signed with HMAC-SHA256 when a key is set.
type webhook struct {
	url    string
	host   string // what the logs say of url: its scheme and host only
	tmpl   *message.Template
	key    []byte
	header string
	client *http.Client
}

func newWebhook(c *config.Webhook) (*webhook, error) {
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("notify.webhook.url: %w", err)
	}
	w := &webhook{url: c.URL, host: u.Scheme + "://" + u.Host, header: c.SignatureHeader,
		client: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if c.BodyTemplate != "" {
		if w.tmpl, err = message.Compile(c.BodyFormat, c.BodyTemplate); err != nil {
			return nil, fmt.Errorf("notify.webhook.body_template: %w", err)
		}
	}
	if k := c.HMACKey.Reveal(); k != "" {
		w.key = []byte(k)
	}
	return w, nil
}

func (w *webhook) Name() string     { return nameWebhook }
func (w *webhook) describe() string { return w.host }

// Sign returns the signature of body with key, as the signature header
// carries it: "sha256=" and the hex HMAC-SHA256.
func Sign(key, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// body is what the webhook POSTs of m, and its media type.
func (w *webhook) body(m *message.Message) ([]byte, string, error) {
	if w.tmpl != nil {
		b, err := w.tmpl.Execute(m)
		return b, w.tmpl.ContentType(), err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err := enc.Encode(m)
	return buf.Bytes(), "application/json", err
}

// Send POSTs m once. A 2xx answer is success; 408, 429 and 5xx are
// tried again, other answers are permanent. The error never holds the
// URL's path or query, where some services put a token.
func (w *webhook) Send(ctx context.Context, m *message.Message) error {
	body, ctype, err := w.body(m)
	if err != nil {
		return Permanent(fmt.Errorf("the body template failed: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return Permanent(errors.New("the request cannot be made"))
	}
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("User-Agent", "astguard")
	req.Header.Set(EventHeader, m.Event)
	if w.key != nil {
		req.Header.Set(w.header, Sign(w.key, body))
	}
	resp, err := w.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("POST %s: %w", w.host, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return statusError(w.host, resp.StatusCode)
}

// statusError is nil for a 2xx status; 408, 429 and 5xx may pass with a
// retry, any other is permanent.
func statusError(host string, code int) error {
	if code >= 200 && code < 300 {
		return nil
	}
	err := fmt.Errorf("POST %s: %d %s", host, code, http.StatusText(code))
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500 {
		return err
	}
	return Permanent(err)
}
