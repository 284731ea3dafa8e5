// oci-check: proves with Istio's own code that what build.sh and wasmplugin/ produce is what Istio
// accepts. Built once into ~/.cache/mcpgw/ by tests/oci/test_oci.py (make oci-test).
//
//	oci-check pull -ref REGISTRY/REPO@sha256:D -wasm target/mcpgw.wasm -variant compat|artifact
//	    Istio's image fetcher (pkg/wasm NewImageFetcher + PrepareFetch) pulls the image by digest, the
//	    bytes must equal the module; the manifest's media types must be the variant's; and the istio-agent
//	    cache (LocalFileCache.Get, what the agent runs for `oci://` URLs) accepts the image digest as
//	    checksum and refuses the module's own sha256 there.
//	oci-check reject-one-layer -repo REGISTRY/REPO -wasm target/mcpgw.wasm
//	    pushes the one-layer Wasm artifact (`oras push` shape) and checks Istio's fetcher refuses it.
//	oci-check kustomize DIR
//	    prints `kustomize build DIR` (sigs.k8s.io/kustomize/api, the library kubectl embeds).
//	oci-check validate -f rendered.yaml -crd FILE... [-k8s-strict]
//	    every document against its CRD (structural schema, unknown fields, CEL rules: what the API
//	    server checks); Istio's own webhook validation for EnvoyFilter and WasmPlugin; built-in kinds
//	    decoded strictly into k8s.io/api types (unknown fields are errors).
//	oci-check tojson FILE
//	    the YAML documents of FILE as a JSON array.
//	oci-check ecds -f rendered.yaml
//	    the EnvoyFilter's EXTENSION_CONFIG patch through istiod's builder (BuildXDSObjectFromStruct)
//	    and the agent's ECDS rewrite (MaybeConvertWasmExtensionConfig: pulls the oci:// image into a
//	    local file); prints JSON facts for the test. The WasmPlugin's pluginConfig through the same
//	    protomarshal.ToJSON istiod uses.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpwasm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	extensions "istio.io/api/extensions/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/validation"
	"istio.io/istio/pkg/config/validation/envoyfilter"
	"istio.io/istio/pkg/config/xds"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/util/protomarshal"
	"istio.io/istio/pkg/wasm"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: oci-check pull|reject-one-layer|kustomize|validate|ecds ...")
	}
	// Istio's log lines go to stderr: stdout carries the results.
	logOpts := istiolog.DefaultOptions()
	logOpts.OutputPaths = []string{"stderr"}
	logOpts.ErrorOutputPaths = []string{"stderr"}
	if err := istiolog.Configure(logOpts); err != nil {
		fail(err.Error())
	}
	var err error
	switch os.Args[1] {
	case "pull":
		err = pull(os.Args[2:])
	case "reject-one-layer":
		err = rejectOneLayer(os.Args[2:])
	case "kustomize":
		err = kustomize(os.Args[2:])
	case "validate":
		err = validate(os.Args[2:])
	case "ecds":
		err = ecds(os.Args[2:])
	case "tojson":
		err = toJSON(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "oci-check:", msg)
	os.Exit(1)
}

// ---------------------------------------------------------------------------------------------
// pull / reject-one-layer

var variants = map[string]struct {
	config string
	layers []string
}{
	"compat":   {"application/vnd.oci.image.config.v1+json", []string{"application/vnd.oci.image.layer.v1.tar+gzip"}},
	"artifact": {"application/vnd.module.wasm.config.v1+json", []string{"application/vnd.module.wasm.config.v1+json", "application/vnd.module.wasm.content.layer.v1+wasm"}},
}

func pull(args []string) error {
	fs := flag.NewFlagSet("pull", flag.ExitOnError)
	ref := fs.String("ref", "", "REGISTRY/REPO@sha256:DIGEST")
	wasmFile := fs.String("wasm", "", "the module the image must hold")
	variant := fs.String("variant", "compat", "compat | artifact")
	_ = fs.Parse(args)
	want, err := os.ReadFile(*wasmFile)
	if err != nil {
		return err
	}
	expect, ok := variants[*variant]
	if !ok {
		return fmt.Errorf("unknown variant %q", *variant)
	}
	_, digest, ok := strings.Cut(*ref, "@sha256:")
	if !ok {
		return fmt.Errorf("-ref must be pinned by digest: %s", *ref)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// 1. Istio's fetcher, as the brief of pkg/wasm has it (Insecure: skip TLS verification; a
	// loopback registry is plain HTTP, which the fetcher falls back to by itself).
	fetcher := wasm.NewImageFetcher(ctx, wasm.ImageFetcherOption{Insecure: true})
	fetch, actual, err := fetcher.PrepareFetch(*ref)
	if err != nil {
		return fmt.Errorf("PrepareFetch: %w", err)
	}
	if actual != digest {
		return fmt.Errorf("PrepareFetch digest %s, want %s", actual, digest)
	}
	got, err := fetch()
	if err != nil {
		return fmt.Errorf("Istio's fetcher refused the image: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("pulled %d bytes, which differ from %s (%d bytes)", len(got), *wasmFile, len(want))
	}

	// 2. The media types, read with the library Istio's fetcher uses.
	r, err := name.ParseReference(*ref, name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return err
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	if m.MediaType != types.OCIManifestSchema1 {
		return fmt.Errorf("manifest media type %q, want %q", m.MediaType, types.OCIManifestSchema1)
	}
	if string(m.Config.MediaType) != expect.config {
		return fmt.Errorf("config media type %q, want %q", m.Config.MediaType, expect.config)
	}
	var layers []string
	for _, l := range m.Layers {
		layers = append(layers, string(l.MediaType))
	}
	if strings.Join(layers, ",") != strings.Join(expect.layers, ",") {
		return fmt.Errorf("layer media types %v, want %v", layers, expect.layers)
	}

	// 3. The istio-agent's path for `oci://` URLs: the module cache. Its checksum for an OCI image
	// is the manifest digest (WasmPlugin `sha256:` means that digest), not the module's sha256.
	dir, err := os.MkdirTemp("", "oci-check-cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cache := wasm.NewLocalFileCache(dir, wasm.Options{})
	defer cache.Cleanup()
	path, err := cache.Get("oci://"+*ref, wasm.GetOptions{Checksum: digest, ResourceName: "mcpgw", RequestTimeout: 30 * time.Second})
	if err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}
	cached, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(cached, want) {
		return fmt.Errorf("agent cache file %s differs from %s", path, *wasmFile)
	}
	moduleSum := sha256.Sum256(want)
	_, err = wasm.NewLocalFileCache(filepath.Join(dir, "2"), wasm.Options{}).Get("oci://"+*ref,
		wasm.GetOptions{Checksum: hex.EncodeToString(moduleSum[:]), ResourceName: "mcpgw", RequestTimeout: 30 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		return fmt.Errorf("agent cache accepted the module's sha256 as the image checksum (err %v)", err)
	}
	fmt.Printf("ok: %s (%s: config %s, layers %v) pulled by Istio's fetcher and agent cache, %d bytes equal to %s\n",
		*ref, *variant, m.Config.MediaType, layers, len(got), *wasmFile)
	return nil
}

func rejectOneLayer(args []string) error {
	fs := flag.NewFlagSet("reject-one-layer", flag.ExitOnError)
	repo := fs.String("repo", "", "REGISTRY/REPO to push the one-layer artifact to")
	wasmFile := fs.String("wasm", "", "the module")
	_ = fs.Parse(args)
	module, err := os.ReadFile(*wasmFile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(module, "application/vnd.module.wasm.content.layer.v1+wasm"))
	if err != nil {
		return err
	}
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), "application/vnd.module.wasm.config.v1+json")
	tag, err := name.NewTag(*repo+":one-layer", name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	ref := *repo + "@" + d.String()
	fetcher := wasm.NewImageFetcher(ctx, wasm.ImageFetcherOption{Insecure: true})
	fetch, _, err := fetcher.PrepareFetch(ref)
	if err != nil {
		return fmt.Errorf("PrepareFetch: %w", err)
	}
	_, err = fetch()
	if err == nil {
		return errors.New("Istio's fetcher accepted a one-layer Wasm artifact")
	}
	if !strings.Contains(err.Error(), "number of layers must be 2 but got 1") {
		return fmt.Errorf("unexpected refusal: %v", err)
	}
	fmt.Printf("ok: one-layer artifact %s refused: number of layers must be 2 but got 1\n", ref)
	return nil
}

// ---------------------------------------------------------------------------------------------
// kustomize

func kustomize(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: oci-check kustomize DIR")
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), args[0])
	if err != nil {
		return err
	}
	out, err := m.AsYaml()
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

// tojson FILE: the YAML documents of FILE as one JSON array (the Python test has no YAML parser).
func toJSON(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: oci-check tojson FILE")
	}
	docs, err := readDocs(args[0])
	if err != nil {
		return err
	}
	objs := []map[string]any{}
	for _, d := range docs {
		objs = append(objs, d.obj)
	}
	return json.NewEncoder(os.Stdout).Encode(objs)
}

// ---------------------------------------------------------------------------------------------
// validate

type doc struct {
	raw  []byte
	obj  map[string]any
	kind string
	gv   string
	name string
}

func (d doc) String() string { return fmt.Sprintf("%s %s/%s", d.gv, d.kind, d.name) }

func readDocs(path string) ([]doc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var docs []doc
	for _, part := range splitYAML(data) {
		var obj map[string]any
		if err := sigsyaml.Unmarshal(part, &obj); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if obj == nil {
			continue
		}
		meta, _ := obj["metadata"].(map[string]any)
		n, _ := meta["name"].(string)
		docs = append(docs, doc{raw: part, obj: obj, kind: str(obj["kind"]), gv: str(obj["apiVersion"]), name: n})
	}
	return docs, nil
}

func splitYAML(data []byte) [][]byte {
	var parts [][]byte
	var cur bytes.Buffer
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if bytes.Equal(bytes.TrimRight(line, "\r\n"), []byte("---")) {
			parts = append(parts, append([]byte(nil), cur.Bytes()...))
			cur.Reset()
			continue
		}
		cur.Write(line)
	}
	return append(parts, cur.Bytes())
}

func str(v any) string { s, _ := v.(string); return s }

type crdVersion struct {
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

func loadCRDs(files []string) (map[string]crdVersion, error) {
	out := map[string]crdVersion{}
	for _, f := range files {
		docs, err := readDocs(f)
		if err != nil {
			return nil, err
		}
		for _, d := range docs {
			if d.kind != "CustomResourceDefinition" {
				continue
			}
			var crd apiextensionsv1.CustomResourceDefinition
			if err := sigsyaml.Unmarshal(d.raw, &crd); err != nil {
				return nil, fmt.Errorf("%s %s: %w", f, d.name, err)
			}
			for _, v := range crd.Spec.Versions {
				if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
					continue
				}
				var internal apiextensions.JSONSchemaProps
				if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
					return nil, err
				}
				s, err := structuralschema.NewStructural(&internal)
				if err != nil {
					return nil, fmt.Errorf("%s %s/%s: %w", f, crd.Name, v.Name, err)
				}
				val, _, err := apiservervalidation.NewSchemaValidator(&internal)
				if err != nil {
					return nil, err
				}
				key := crd.Spec.Group + "/" + v.Name + "/" + crd.Spec.Names.Kind
				out[key] = crdVersion{structural: s, validator: val, cel: cel.NewValidator(s, true, celconfig.PerCallLimit)}
			}
		}
	}
	return out, nil
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func validate(args []string) error {
	fs := flag.NewFlagSet("validate", flag.ExitOnError)
	file := fs.String("f", "", "rendered manifests (multi-document YAML)")
	var crdFiles multiFlag
	fs.Var(&crdFiles, "crd", "a file of CustomResourceDefinitions (repeatable)")
	_ = fs.Parse(args)
	crds, err := loadCRDs(crdFiles)
	if err != nil {
		return err
	}
	docs, err := readDocs(*file)
	if err != nil {
		return err
	}
	var problems []string
	for _, d := range docs {
		checks, errs := validateDoc(d, crds)
		for _, e := range errs {
			problems = append(problems, fmt.Sprintf("%s: %s", d, e))
		}
		if len(errs) == 0 {
			fmt.Printf("ok: %s (%s)\n", d, strings.Join(checks, ", "))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

func validateDoc(d doc, crds map[string]crdVersion) (checks []string, errs []string) {
	switch d.gv + "/" + d.kind {
	case "v1/Secret":
		return strict(d.raw, &corev1.Secret{})
	case "v1/ConfigMap":
		return strict(d.raw, &corev1.ConfigMap{})
	case "v1/Service":
		return strict(d.raw, &corev1.Service{})
	case "v1/ServiceAccount":
		return strict(d.raw, &corev1.ServiceAccount{})
	case "apps/v1/Deployment":
		return strict(d.raw, &appsv1.Deployment{})
	case "networking.k8s.io/v1/NetworkPolicy":
		return strict(d.raw, &networkingv1.NetworkPolicy{})
	}
	group, version, ok := strings.Cut(d.gv, "/")
	if !ok {
		return nil, []string{"no CRD and no built-in type known for " + d.gv}
	}
	crd, ok := crds[group+"/"+version+"/"+d.kind]
	if !ok {
		return nil, []string{"no CRD loaded for " + d.gv + " " + d.kind}
	}
	// As the API server does on create: prune (reporting unknown fields), apply the schema's
	// defaults, then validate the schema and the CEL rules on the defaulted object.
	obj := deepCopy(d.obj)
	if unknown := pruning.PruneWithOptions(obj, crd.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}); len(unknown) > 0 {
		errs = append(errs, "unknown fields (the API server would drop them): "+strings.Join(unknown, ", "))
	}
	defaulting.Default(obj, crd.structural)
	for _, e := range apiservervalidation.ValidateCustomResource(field.NewPath(""), obj, crd.validator) {
		errs = append(errs, "schema: "+e.Error())
	}
	celErrs, _ := crd.cel.Validate(context.Background(), field.NewPath(""), crd.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	for _, e := range celErrs {
		errs = append(errs, "CEL rule: "+e.Error())
	}
	checks = append(checks, "CRD schema", "unknown fields", "CEL rules")

	// Istio's own validation (istiod's admission webhook runs these).
	spec, _ := json.Marshal(d.obj["spec"])
	meta := config.Meta{Name: d.name, Namespace: namespaceOf(d.obj)}
	switch d.gv + "/" + d.kind {
	case "networking.istio.io/v1alpha3/EnvoyFilter":
		var ef networking.EnvoyFilter
		if err := protomarshal.UnmarshalString(string(spec), &ef); err != nil {
			errs = append(errs, "Istio decode: "+err.Error())
			break
		}
		if _, err := envoyfilter.ValidateEnvoyFilter(config.Config{Meta: meta, Spec: &ef}); err != nil {
			errs = append(errs, "Istio validation: "+err.Error())
		}
		checks = append(checks, "Istio ValidateEnvoyFilter")
	case "extensions.istio.io/v1alpha1/WasmPlugin":
		var wp extensions.WasmPlugin
		if err := protomarshal.UnmarshalString(string(spec), &wp); err != nil {
			errs = append(errs, "Istio decode: "+err.Error())
			break
		}
		if _, err := validation.ValidateWasmPlugin(config.Config{Meta: meta, Spec: &wp}); err != nil {
			errs = append(errs, "Istio validation: "+err.Error())
		}
		checks = append(checks, "Istio ValidateWasmPlugin")
	}
	return checks, errs
}

func namespaceOf(obj map[string]any) string {
	meta, _ := obj["metadata"].(map[string]any)
	return str(meta["namespace"])
}

func strict(raw []byte, into any) ([]string, []string) {
	if err := sigsyaml.UnmarshalStrict(raw, into); err != nil {
		return nil, []string{"strict decode: " + err.Error()}
	}
	return []string{"strict decode into k8s.io/api"}, nil
}

// deepCopy also turns whole numbers into int64, as the API server's decoder does (CEL rules on
// integer fields fail on float64).
func deepCopy(obj map[string]any) map[string]any {
	b, _ := json.Marshal(obj)
	var out map[string]any
	_ = utiljson.Unmarshal(b, &out)
	return out
}

// ---------------------------------------------------------------------------------------------
// ecds

type ecdsFacts struct {
	EnvoyFilters []envoyFilterFacts `json:"envoy_filters"`
	WasmPlugins  []wasmPluginFacts  `json:"wasm_plugins"`
}

type envoyFilterFacts struct {
	Name                         string            `json:"name"`
	Namespace                    string            `json:"namespace"`
	WorkloadSelector             map[string]string `json:"workload_selector"`
	ExtensionName                string            `json:"extension_name"`
	RemoteURI                    string            `json:"remote_uri"`
	LocalFile                    string            `json:"local_file"`
	LocalFileSHA256              string            `json:"local_file_sha256"`
	AllowOnHeadersStopIteration  bool              `json:"allow_on_headers_stop_iteration"`
	FailurePolicy                string            `json:"failure_policy"`
	RootID                       string            `json:"root_id"`
	VMID                         string            `json:"vm_id"`
	Configuration                string            `json:"configuration"`
	HTTPFilterName               string            `json:"http_filter_name"`
	HTTPFilterTypeURLs           []string          `json:"http_filter_type_urls"`
	HTTPFilterInsertBeforeRouter bool              `json:"http_filter_insert_before_router"`
	// The filter as the agent hands it to Envoy (ECDS resource after conversion, protojson with
	// "@type"), for `envoy --mode validate` in the test.
	ConvertedFilter json.RawMessage `json:"converted_filter"`
}

type wasmPluginFacts struct {
	Name          string `json:"name"`
	Namespace     string `json:"namespace"`
	URL           string `json:"url"`
	Configuration string `json:"configuration"`
}

func ecds(args []string) error {
	fs := flag.NewFlagSet("ecds", flag.ExitOnError)
	file := fs.String("f", "", "rendered manifests")
	_ = fs.Parse(args)
	docs, err := readDocs(*file)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "oci-check-ecds-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cache := wasm.NewLocalFileCache(dir, wasm.Options{})
	defer cache.Cleanup()

	var facts ecdsFacts
	for _, d := range docs {
		spec, _ := json.Marshal(d.obj["spec"])
		switch d.kind {
		case "EnvoyFilter":
			var ef networking.EnvoyFilter
			if err := protomarshal.UnmarshalString(string(spec), &ef); err != nil {
				return fmt.Errorf("%s: %w", d, err)
			}
			f, err := envoyFilter(d, &ef, cache)
			if err != nil {
				return fmt.Errorf("%s: %w", d, err)
			}
			facts.EnvoyFilters = append(facts.EnvoyFilters, f)
		case "WasmPlugin":
			var wp extensions.WasmPlugin
			if err := protomarshal.UnmarshalString(string(spec), &wp); err != nil {
				return fmt.Errorf("%s: %w", d, err)
			}
			// What istiod does with pluginConfig (pilot/pkg/model/extensions.go buildWasmConfig).
			js, err := protomarshal.ToJSON(wp.PluginConfig)
			if err != nil {
				return err
			}
			facts.WasmPlugins = append(facts.WasmPlugins, wasmPluginFacts{Name: d.name, Namespace: namespaceOf(d.obj), URL: wp.Url, Configuration: js})
		}
	}
	out, _ := json.MarshalIndent(facts, "", "  ")
	fmt.Println(string(out))
	return nil
}

func envoyFilter(d doc, ef *networking.EnvoyFilter, cache wasm.Cache) (envoyFilterFacts, error) {
	f := envoyFilterFacts{Name: d.name, Namespace: namespaceOf(d.obj)}
	if ef.WorkloadSelector != nil {
		f.WorkloadSelector = ef.WorkloadSelector.Labels
	}
	for _, p := range ef.ConfigPatches {
		// istiod: pilot/pkg/model/envoyfilter.go builds each patch value with this (strict for ADD of known types).
		obj, err := xds.BuildXDSObjectFromStruct(p.ApplyTo, p.Patch.GetValue(), true)
		if err != nil {
			return f, err
		}
		switch p.ApplyTo {
		case networking.EnvoyFilter_EXTENSION_CONFIG:
			ec := obj.(*core.TypedExtensionConfig)
			f.ExtensionName = ec.Name
			var before httpwasm.Wasm
			if err := ec.TypedConfig.UnmarshalTo(&before); err != nil {
				return f, err
			}
			f.RemoteURI = before.Config.GetVmConfig().GetCode().GetRemote().GetHttpUri().GetUri()
			// The istio-agent's ECDS interception (pkg/istio-agent/xds_proxy.go rewriteAndForward).
			res, err := anypb.New(ec)
			if err != nil {
				return f, err
			}
			resources := []*anypb.Any{res}
			if err := wasm.MaybeConvertWasmExtensionConfig(resources, cache); err != nil {
				return f, fmt.Errorf("agent ECDS conversion: %w", err)
			}
			var after core.TypedExtensionConfig
			if err := resources[0].UnmarshalTo(&after); err != nil {
				return f, err
			}
			var w httpwasm.Wasm
			if err := after.TypedConfig.UnmarshalTo(&w); err != nil {
				return f, fmt.Errorf("after conversion the resource is %s (the agent's deny-all fallback when the pull fails)", after.TypedConfig.TypeUrl)
			}
			local := w.Config.GetVmConfig().GetCode().GetLocal().GetFilename()
			if local == "" {
				return f, errors.New("the agent did not rewrite the remote code to a local file")
			}
			fh, err := os.Open(local)
			if err != nil {
				return f, err
			}
			h := sha256.New()
			_, _ = io.Copy(h, fh)
			fh.Close()
			f.LocalFile = local
			f.LocalFileSHA256 = hex.EncodeToString(h.Sum(nil))
			f.AllowOnHeadersStopIteration = w.Config.GetAllowOnHeadersStopIteration().GetValue()
			f.FailurePolicy = w.Config.GetFailurePolicy().String()
			f.RootID = w.Config.GetRootId()
			f.VMID = w.Config.GetVmConfig().GetVmId()
			var sv wrapperspb.StringValue
			if err := w.Config.GetConfiguration().UnmarshalTo(&sv); err != nil {
				return f, fmt.Errorf("configuration must be a google.protobuf.StringValue (Envoy hands its value to the plugin): %w", err)
			}
			f.Configuration = sv.Value
			converted, err := protomarshal.ToJSON(after.TypedConfig)
			if err != nil {
				return f, err
			}
			f.ConvertedFilter = json.RawMessage(converted)
		case networking.EnvoyFilter_HTTP_FILTER:
			hf := obj.(*hcm.HttpFilter)
			f.HTTPFilterName = hf.Name
			f.HTTPFilterTypeURLs = hf.GetConfigDiscovery().GetTypeUrls()
			sub := p.GetMatch().GetListener().GetFilterChain().GetFilter().GetSubFilter().GetName()
			f.HTTPFilterInsertBeforeRouter = p.Patch.Operation == networking.EnvoyFilter_Patch_INSERT_BEFORE && sub == "envoy.filters.http.router"
		}
	}
	return f, nil
}

