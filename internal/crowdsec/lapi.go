package crowdsec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
	"github.com/crowdsecurity/crowdsec/pkg/fflag"
	"github.com/crowdsecurity/crowdsec/pkg/models"
	csbouncer "github.com/crowdsecurity/go-cs-bouncer"
	"github.com/go-openapi/strfmt"
	"github.com/sirupsen/logrus"
)

// Problem says why a request to the Local API failed, in a word fit for
// /healthz and a log field.
type Problem string

// The problems of a request.
const (
	// ProblemUnreachable: no answer (refused, reset, timed out).
	ProblemUnreachable Problem = "unreachable"
	// ProblemUnauthorized: the LAPI refused the credentials (401, 403, or
	// a failed login).
	ProblemUnauthorized Problem = "unauthorized"
	// ProblemRejected: the LAPI refused the request (another 4xx).
	ProblemRejected Problem = "rejected"
	// ProblemServer: the LAPI failed (5xx, or an unexpected status).
	ProblemServer Problem = "server_error"
	// ProblemOversized: the answer was longer than the guard reads.
	ProblemOversized Problem = "oversized"
	// ProblemMalformed: the answer was not the JSON the API documents.
	ProblemMalformed Problem = "malformed"
)

// apiError is a failed request.
type apiError struct {
	op      string // "push", "pull"
	problem Problem
	status  int // HTTP status; 0 when unknown or there was no answer
	err     error
}

func (e *apiError) Error() string {
	if e.status != 0 {
		return fmt.Sprintf("crowdsec %s: %s (HTTP %d): %s", e.op, e.problem, e.status, clean(e.err.Error(), 300))
	}
	return fmt.Sprintf("crowdsec %s: %s: %s", e.op, e.problem, clean(e.err.Error(), 300))
}

func (e *apiError) Unwrap() error { return e.err }

// retryable reports whether sending the same request again may work: not
// when the LAPI refused its content.
func (e *apiError) retryable() bool { return e.problem != ProblemRejected }

func problemOf(err error) Problem {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.problem
	}
	return ProblemUnreachable
}

// classify turns an error of the client libraries, and the answer's
// status when there was one, into an *apiError.
func classify(op string, resp *apiclient.Response, err error) error {
	status := 0
	if resp != nil && resp.Response != nil {
		status = resp.Response.StatusCode
	}
	ae := &apiError{op: op, status: status, err: err}
	var er *apiclient.ErrorResponse
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, errOversized):
		ae.problem = ProblemOversized
	case errors.As(err, &se), errors.As(err, &te), errors.Is(err, io.ErrUnexpectedEOF) && status/100 == 2:
		ae.problem = ProblemMalformed
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		ae.problem = ProblemUnauthorized
	case status >= 400 && status < 500:
		ae.problem = ProblemRejected
	case status >= 300:
		ae.problem = ProblemServer
	case errors.As(err, &er):
		// An error answer without a status is the login's, made inside
		// the JWT transport before the request itself.
		ae.problem = ProblemUnauthorized
	default:
		ae.problem = ProblemUnreachable
	}
	return ae
}

// errOversized is returned by a limitedBody read past its limit.
var errOversized = errors.New("the answer is longer than the guard reads")

// limitedBody reads at most n bytes of the body, then fails with
// errOversized: a decoder reading from it stops there, having held no
// more than n bytes, however long the body (a gzip bomb included: it
// sees the body decompressed).
type limitedBody struct {
	io.ReadCloser
	n int64
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.n <= 0 {
		// One byte more tells a body of exactly n bytes from a longer one.
		var one [1]byte
		k, err := l.ReadCloser.Read(one[:])
		if k > 0 {
			return 0, errOversized
		}
		return 0, err
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	k, err := l.ReadCloser.Read(p)
	l.n -= int64(k)
	return k, err
}

// limitTransport bounds every answer's body, under the libraries' own
// transports (the JWT's and the API key's).
type limitTransport struct {
	next http.RoundTripper
	max  int64
}

func (t *limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	if resp != nil && resp.Body != nil {
		resp.Body = &limitedBody{ReadCloser: resp.Body, n: t.max}
	}
	return resp, err
}

// quietLibraries keeps the client libraries' own logging (logrus) out of
// the guard's log: their debug and trace lines print tokens and request
// dumps with the password, and every failure they meet is logged by this
// package with its cause. It also turns off the retries with backoff of
// their login, which would hold a request for minutes: this package
// retries, with a backoff it bounds.
var quietLibraries = sync.OnceFunc(func() {
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.PanicLevel)
	_ = fflag.DisableHttpRetryBackoff.Set(true)
})

// lapi holds the two clients of the Local API: crowdsec's pkg/apiclient
// for the machine (watcher) that pushes alerts, its JWT renewed by the
// library before it expires and after a 401; and go-cs-bouncer's stream
// bouncer for the decision stream, whose request the pull loop makes
// itself (its Run retries without backoff and gives up when the first
// pull fails, which a guard must not).
type lapi struct {
	watcher *apiclient.ApiClient
	bouncer *csbouncer.StreamBouncer
}

// newLAPI builds the clients of the parts that are on.
func newLAPI(opts *Options, u *url.URL, base http.RoundTripper) (*lapi, error) {
	quietLibraries()
	limited := &limitTransport{next: base, max: opts.MaxBody}
	c := &lapi{}
	if opts.Push {
		scenarios := Scenarios()
		c.watcher = apiclient.NewClient(&apiclient.Config{
			MachineID:      opts.MachineID,
			Password:       strfmt.Password(opts.Password),
			URL:            u,
			VersionPrefix:  "v1",
			UserAgent:      opts.UserAgent,
			UpdateScenario: func(context.Context) ([]string, error) { return scenarios, nil },
		})
		jt, ok := c.watcher.GetClient().Transport.(*apiclient.JWTTransport)
		if !ok {
			return nil, errors.New("crowdsec: the machine's client has no JWT transport")
		}
		jt.Transport = limited
		guardClient(c.watcher.GetClient(), opts.Timeout)
		// A refused token is renewed once; no other status is retried
		// there (its retries sleep, deaf to the guard's shutdown).
		jt.RetryConfig = apiclient.NewRetryConfig(apiclient.WithStatusCodeConfig(http.StatusUnauthorized, 1, false, true))
	}
	if opts.Pull {
		b := &csbouncer.StreamBouncer{
			APIKey:                 opts.APIKey,
			APIUrl:                 u.String(),
			TickerInterval:         opts.PullInterval.String(),
			Scopes:                 []string{"ip", "range"},
			ScenariosContaining:    opts.ScenariosContaining,
			ScenariosNotContaining: opts.ScenariosNotContaining,
			Origins:                opts.Origins,
			UserAgent:              opts.UserAgent,
		}
		if err := b.Init(); err != nil {
			return nil, fmt.Errorf("crowdsec: bouncer: %w", err)
		}
		kt, ok := b.APIClient.GetClient().Transport.(*apiclient.APIKeyTransport)
		if !ok {
			return nil, errors.New("crowdsec: the bouncer's client has no API key transport")
		}
		kt.Transport = limited
		guardClient(b.APIClient.GetClient(), opts.Timeout)
		// The decisions of every source, the community's and the lists'
		// included: crowdsec.origins and the scenarios filter them.
		b.Opts.CommunityPull, b.Opts.AdditionalPull = true, true
		c.bouncer = b
	}
	return c, nil
}

// guardClient bounds each request of a library's client to timeout and
// refuses redirects: the libraries' transports would send the API key or
// token again to wherever a redirect points.
func guardClient(c *http.Client, timeout time.Duration) {
	c.Timeout = timeout
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
}

// login logs the machine in (the push part's first request, so that
// wrong credentials show at once, not at the first ban) and hands the
// token to the JWT transport, which renews it from then on.
func (c *lapi) login(ctx context.Context, machineID, password string) error {
	pw := strfmt.Password(password)
	out, resp, err := c.watcher.Auth.AuthenticateWatcher(ctx, models.WatcherAuthRequest{MachineID: &machineID, Password: &pw, Scenarios: Scenarios()})
	if err != nil {
		return classify("push", resp, err)
	}
	var exp time.Time
	if out.Token == "" || exp.UnmarshalText([]byte(out.Expire)) != nil {
		return &apiError{op: "push", problem: ProblemMalformed, status: http.StatusOK, err: errors.New("no token or expiry in the login's answer")}
	}
	jt := c.watcher.GetClient().Transport.(*apiclient.JWTTransport)
	jt.Token, jt.Expiration = out.Token, exp
	return nil
}

// pushAlerts sends alerts (POST /v1/alerts) as the machine.
func (c *lapi) pushAlerts(ctx context.Context, alerts models.AddAlertsRequest) error {
	_, resp, err := c.watcher.Alerts.Add(ctx, alerts)
	if err != nil {
		return classify("push", resp, err)
	}
	return nil
}

// stream pulls the decision stream (GET /v1/decisions/stream) as the
// bouncer: with startup every active decision, else what changed since
// the bouncer's last pull. The LAPI keeps, per address, its longest
// decision: a new one is sent when it is the longest, a deleted one when
// the address has none left.
func (c *lapi) stream(ctx context.Context, startup bool) (*models.DecisionsStreamResponse, error) {
	opts := c.bouncer.Opts
	opts.Startup = startup
	out, resp, err := c.bouncer.APIClient.Decisions.GetStream(ctx, opts)
	if err != nil {
		return nil, classify("pull", resp, err)
	}
	if out == nil {
		return &models.DecisionsStreamResponse{}, nil
	}
	return out, nil
}
