// containerfile-check FILE: parses a Containerfile with BuildKit's own Dockerfile frontend (the
// parser and instruction decoder `docker build`, `docker buildx` and `buildctl` use) and runs its
// linter (the rules of `docker build --check`). Exit 1 on a syntax error or a lint warning.
// Nothing is built: base images cannot be pulled here.
package main

import (
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: containerfile-check FILE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "syntax:", err)
		os.Exit(1)
	}
	warnings := 0
	for _, w := range res.Warnings {
		fmt.Fprintf(os.Stderr, "parser warning: %s\n", w.Short)
		warnings++
	}
	lint := linter.New(&linter.Config{Warn: func(rule, description, url, msg string, loc []parser.Range) {
		fmt.Fprintf(os.Stderr, "lint %s: %s (%s)\n", rule, msg, url)
		warnings++
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		fmt.Fprintln(os.Stderr, "instructions:", err)
		os.Exit(1)
	}
	if warnings > 0 {
		os.Exit(1)
	}
	fmt.Printf("ok: %d stages, %d global ARGs, no lint warnings\n", len(stages), len(metaArgs))
}
