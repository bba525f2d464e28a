package crowdsec

import "github.com/prometheus/client_golang/prometheus"

// The metric names. Every label value comes from a list fixed here.
const (
	NameUp        = "astguard_crowdsec_up"
	NameRequests  = "astguard_crowdsec_requests_total"
	NameFailed    = "astguard_crowdsec_requests_failed_total"
	NameOutages   = "astguard_crowdsec_outages_total"
	NameAlerts    = "astguard_crowdsec_alerts_total"
	NameQueued    = "astguard_crowdsec_alerts_queued"
	NameDecisions = "astguard_crowdsec_decisions_total"
	NameRefused   = "astguard_crowdsec_refused_total"
	NamePulls     = "astguard_crowdsec_pulls_total"
)

var (
	descUp = prometheus.NewDesc(NameUp,
		"1 while the part (push, pull) of the CrowdSec link works: its last request was answered; else 0.", []string{"api"}, nil)
	descRequests = prometheus.NewDesc(NameRequests,
		"Requests to the CrowdSec Local API, by part (push, pull).", []string{"api"}, nil)
	descFailed = prometheus.NewDesc(NameFailed,
		"Requests to the CrowdSec Local API that failed, by part.", []string{"api"}, nil)
	descOutages = prometheus.NewDesc(NameOutages,
		"Times a part of the CrowdSec link started failing.", []string{"api"}, nil)
	descAlerts = prometheus.NewDesc(NameAlerts,
		"The guard's bans pushed to CrowdSec, by result (sent; rejected by the Local API; dropped from the full queue; expired before they could be sent).", []string{"result"}, nil)
	descQueued = prometheus.NewDesc(NameQueued,
		"Bans waiting to be pushed to CrowdSec.", nil, nil)
	descDecisions = prometheus.NewDesc(NameDecisions,
		"Decisions pulled from CrowdSec, by result (applied; would: observe mode; own: this guard's own ban; ignored; refused; lifted: deleted upstream, its ban lifted).", []string{"result"}, nil)
	descRefused = prometheus.NewDesc(NameRefused,
		"Decisions or answers from CrowdSec refused, by reason (malformed, too_wide, protected, oversized).", []string{"reason"}, nil)
	descPulls = prometheus.NewDesc(NamePulls,
		"Successful pulls of the CrowdSec decision stream.", nil, nil)
)

var _ prometheus.Collector = (*Service)(nil)

// Describe sends the descriptions of the Service's metrics.
func (s *Service) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descRequests, descFailed, descOutages, descAlerts, descQueued, descDecisions, descRefused, descPulls} {
		ch <- d
	}
}

// Collect sends the Service's figures.
func (s *Service) Collect(ch chan<- prometheus.Metric) {
	st := s.Stats()
	for name, l := range s.Status() {
		up := 0.0
		if l.State == "up" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, name)
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(st.Requests[name]), name)
		ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(st.Failed[name]), name)
		ch <- prometheus.MustNewConstMetric(descOutages, prometheus.CounterValue, float64(st.Outages[name]), name)
	}
	for result, n := range map[string]uint64{"sent": st.AlertsSent, "rejected": st.AlertsRejected, "dropped": st.AlertsDropped, "expired": st.AlertsExpired} {
		ch <- prometheus.MustNewConstMetric(descAlerts, prometheus.CounterValue, float64(n), result)
	}
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(st.AlertsQueued))
	for r, n := range st.Decisions {
		ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(n), r.String())
	}
	for r, n := range st.Refused {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), string(r))
	}
	ch <- prometheus.MustNewConstMetric(descPulls, prometheus.CounterValue, float64(st.Pulls))
}
