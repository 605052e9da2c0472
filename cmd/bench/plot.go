package main

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// addCDF adds a series to the plot named plot.
func (b *bench) addCDF(plot string, s cdfSeries) {
	if b.cdfs == nil {
		b.cdfs = map[string][]cdfSeries{}
	}
	if _, ok := b.cdfs[plot]; !ok {
		b.cdfOrder = append(b.cdfOrder, plot)
	}
	b.cdfs[plot] = append(b.cdfs[plot], s)
}

// cdfTitles are the plots' titles.
var cdfTitles = map[string]string{
	"cdf":          "Tether: commit → SpiceDB write applied (CDF), scenario 2",
	"cdf-capacity": "Tether: commit → applied at 10 / 50 / 80 % of capacity (CDF), scenario 4",
}

type cdfSeries struct {
	label  string
	values []time.Duration // sorted
	dashed bool
}

// renderCDF draws the latency CDFs (log-scaled x axis) as a standalone SVG.
func renderCDF(title string, series []cdfSeries) []byte {
	const w, h, left, right, top, bottom = 960, 440, 70, 390, 40, 50
	pw, ph := float64(w-left-right), float64(h-top-bottom)
	minMs, maxMs := 0.1, 10.0
	for _, s := range series {
		if n := len(s.values); n > 0 {
			maxMs = math.Max(maxMs, ms(s.values[n-1]))
		}
	}
	maxMs = math.Pow(10, math.Ceil(math.Log10(maxMs)))
	x := func(v float64) float64 {
		v = math.Max(v, minMs)
		return left + pw*(math.Log10(v)-math.Log10(minMs))/(math.Log10(maxMs)-math.Log10(minMs))
	}
	y := func(p float64) float64 { return top + ph*(1-p) }
	colors := []string{"#2f6fed", "#18794e", "#c62828", "#8a6d00", "#6b3fa0"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="24" font-size="15">%s</text>`, left, title)
	for d := minMs; d <= maxMs*1.001; d *= 10 {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/><text x="%.1f" y="%d" text-anchor="middle">%g ms</text>`,
			x(d), top, x(d), h-bottom, x(d), h-bottom+16, d)
	}
	for _, p := range []float64{0, 0.5, 0.9, 0.99} {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%g%%</text>`,
			left, y(p), w-right, y(p), left-6, y(p)+4, p*100)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">latency (log scale)</text>`, left+int(pw/2), h-12)
	for i, s := range series {
		n := len(s.values)
		if n == 0 {
			continue
		}
		color := colors[i%len(colors)]
		var pts []string
		step := max(1, n/400)
		for j := 0; j < n; j += step {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(ms(s.values[j])), y(float64(j+1)/float64(n))))
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(ms(s.values[n-1])), y(1)))
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`, color, dash, strings.Join(pts, " "))
		ly := top + 20 + i*22
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/><text x="%d" y="%d">%s (p50 %.1f, p99 %.1f ms)</text>`,
			w-right+10, ly, w-right+30, ly, color, dash, w-right+34, ly+4, s.label, ms(percentile(s.values, 0.5)), ms(percentile(s.values, 0.99)))
	}
	b.WriteString(`</svg>`)
	return []byte(b.String())
}
