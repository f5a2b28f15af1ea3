package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress shows how far a long operation (a copy, a backup, a verify) has
// come: a bar redrawn in place on a terminal, a plain line every few
// seconds otherwise (a log, a pipe).
type progress struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func newProgress(w io.Writer) *progress { return &progress{w: w, tty: isTerminal(w)} }

// show draws pct (0–100) and line; final makes sure a plain line is out.
func (p *progress) show(pct float64, line string, final bool) {
	switch {
	case p.tty:
		n := int(min(max(pct, 0), 100) / 5)
		fmt.Fprintf(p.w, "\r[%s%s] %s   ", strings.Repeat("#", n), strings.Repeat(".", 20-n), line)
		p.drawn = true
	case final || time.Since(p.last) >= 2*time.Second:
		fmt.Fprintln(p.w, line)
		p.last = time.Now()
	}
}

// end ends the bar's line on a terminal.
func (p *progress) end() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
