package guard

import (
	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// maxHeld bounds the concurrent alerts held at once (one per extension).
const maxHeld = 1024

// heldAlerts keeps the concurrent alerts raised while the detector's view
// of live calls may be stale: after events were dropped, a Hangup may be
// among them, and an extension whose ended calls still count as live
// would be hung up and blocked as a thief. Each is held until a rebuild
// from Asterisk's channel list (CoreShowChannels) that began after it was
// raised, then checked against that list.
type heldAlerts struct {
	alerts []held
}

type held struct {
	alert detector.Alert
	// drops is the count of dropped events when the alert was raised: a
	// rebuild that began at or after that count shows the calls as
	// Asterisk has them.
	drops uint64
}

// hold keeps a, raised when drops events had been dropped; an earlier
// alert of the same extension is replaced. It returns false when it could
// not (full): the caller acts on a as it is.
func (h *heldAlerts) hold(a *detector.Alert, drops uint64) bool {
	for i := range h.alerts {
		if x := &h.alerts[i].alert; x.Tech == a.Tech && x.Extension == a.Extension {
			h.alerts[i] = held{alert: *a, drops: drops}
			return true
		}
	}
	if len(h.alerts) >= maxHeld {
		return false
	}
	h.alerts = append(h.alerts, held{alert: *a, drops: drops})
	return true
}

// release takes out the alerts that a rebuild which began when drops
// events had been dropped covers, and returns those the rebuilt view
// still supports, with their count and severity as they are now: the
// extension's live calls in det against t.
func (h *heldAlerts) release(det *detector.Detector, t detector.Threshold, drops uint64, log zerolog.Logger, dst []detector.Alert) []detector.Alert {
	var live []string
	kept := h.alerts[:0]
	for _, x := range h.alerts {
		if x.drops > drops {
			kept = append(kept, x)
			continue
		}
		a := x.alert
		live = det.LiveChannels(a.Tech, a.Extension, live[:0])
		sev := t.Level(len(live))
		ev := log.Info().Str("tech", a.Tech.String()).Str("extension", a.Extension).
			Int("counted", a.Count).Int("live_calls", len(live)).Str("severity", a.Severity.String())
		if sev == 0 || sev < a.Severity {
			ev.Msg("held concurrent alert dropped: Asterisk's channel list shows fewer live calls (their Hangup events were among those dropped)")
			continue
		}
		ev.Msg("held concurrent alert confirmed by Asterisk's channel list")
		a.Count = len(live)
		dst = append(dst, a)
	}
	clear(h.alerts[len(kept):])
	h.alerts = kept
	return dst
}

// holds says whether a is the kind of alert held while the view is stale.
func holds(a *detector.Alert) bool {
	return a.Rule == detector.RuleConcurrent && a.Tech != ami.TechUnknown
}
