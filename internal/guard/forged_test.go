package guard

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/metrics"
)

// A caller name carrying a line break and a second Channel header (a value
// Asterisk printed, read as headers) never moves a call to the extension it
// names: the live guard reads every header, sees the repeat, counts the
// message as forged and does not use it. A reader that kept the last value
// of a repeated key would have blamed 201 for 200's burst.
func TestForgedChannelMovesNoCall(t *testing.T) {
	t.Parallel()
	h := startGuardOn(t, amitest.Options{}, nil, nil, nil)
	waitLoggedIn(t, h)
	g := <-h.guard
	// 201 authenticates with its secret: a burst blamed on it would go
	// critical and be acted on.
	h.srv.Inject(securityFrame("SuccessfulAuth", "SIP", "201", "IPV4/UDP/192.0.2.31/5060", "UsingPassword: 1"))
	const calls = 6
	for i := range calls {
		h.srv.Inject(newchannelFrame(fmt.Sprintf("SIP/200-%08x", 0x500+i), fmt.Sprintf("1795631000.%d", i),
			"00442071838750", "Eve\r\nChannel: SIP/201-0000abcd"))
	}
	waitFor(t, "the forged messages counted", 10*time.Second, func() bool {
		return metricsValue(gathered(t, g), metrics.NameEventsForged) >= calls
	})
	for _, a := range h.srv.Actions() {
		for _, hd := range a.Headers {
			if a.Name != "Login" && strings.Contains(hd[1], "201") {
				t.Errorf("an action touched 201, named only in a forged header: %s %v", a.Name, a.Headers)
			}
		}
	}
	// (200's channels are real: the resync after the login may list them
	// from Asterisk, and alerts for 200 are then right.)
	for _, l := range logLines(h, "fraud alert") {
		if l.Extension == "201" {
			t.Errorf("an alert blames 201, named only in a forged header: %+v", l)
		}
	}
}
