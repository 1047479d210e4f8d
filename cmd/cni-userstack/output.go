package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// outputFlag is -o/--output: how a command prints what it read.
type outputFlag struct {
	format string
	// formats lists what the command accepts; "" is its table.
	formats []string
}

func (o *outputFlag) add(cmd *cobra.Command, formats ...string) {
	o.formats = formats
	cmd.Flags().StringVarP(&o.format, "output", "o", "", fmt.Sprintf("output format: one of %q (default: a table)", formats))
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return formats, cobra.ShellCompDirectiveNoFileComp
	})
}

func (o *outputFlag) validate() error {
	if o.format == "" {
		return nil
	}
	for _, f := range o.formats {
		if f == o.format {
			return nil
		}
	}
	return usageErrorf("--output %q: want one of %q", o.format, o.formats)
}

// structured prints v as JSON or YAML when -o asks for it, and reports
// whether it did.
func (o *outputFlag) structured(w io.Writer, v any) (bool, error) {
	switch o.format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return true, enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return true, err
		}
		_, err = w.Write(b)
		return true, err
	}
	return false, nil
}
