/// What a newcomer trips on (issue 25, "What a newcomer trips on"): each behaviour with a test that
/// failed before its fix.
module Lifting.Tests.NewcomerTests

open System
open System.IO
open System.Text.RegularExpressions
open Expecto
open Lifting.Data
open Lifting.Host
open Lifting.Training
open Lifting.Tests.DataTests
open Lifting.Tests.HostTests

let private invariant = Globalization.CultureInfo.InvariantCulture

/// A CSV file in a fresh folder.
let csvFile (name: string) (text: string) =
    let path = Path.Combine(tempDir (), name)
    File.WriteAllText(path, text)
    path

/// Three separable classes of `count` rows (4 features, integer labels 0–2), as scikit-learn's
/// load_iris exports them: a summary line "150,4,setosa,versicolor,virginica" first, no header.
let irisLike (count: int) (summary: bool) =
    let rng = Random(5)
    let rows =
        [ for i in 0 .. count - 1 ->
              let k = i % 3
              let f (scale: float) = (float k * scale + rng.NextDouble()).ToString("F3", invariant)
              $"{f 3.0},{f 2.0},{f 1.0},{f 0.5},{k}" ]
    let lines = if summary then $"{count},4,setosa,versicolor,virginica" :: rows else rows
    String.Join("\n", lines) + "\n"

/// Exit code 2, one line on standard error holding every fragment and none of `absent`.
let refused (args: string list) (fragments: string list) (absent: string list) =
    let code, _, err = lifting args
    Expect.equal code 2 $"exit code 2 for %A{args}: {err}"
    Expect.equal (err.Trim().Split('\n').Length) 1 $"one line: {err}"
    for f in fragments do Expect.stringContains err f $"the message names '{f}'"
    for a in absent do Expect.isFalse (err.Contains(a: string)) $"the message does not say '{a}': {err}"

/// CRC-32C (Castagnoli), the checksum of TFRecord framing, bit by bit.
let crc32c (bytes: byte[]) (offset: int) (count: int) =
    let mutable crc = 0xFFFFFFFFu
    for i in offset .. offset + count - 1 do
        crc <- crc ^^^ uint32 bytes.[i]
        for _ in 0 .. 7 do
            crc <- if crc &&& 1u <> 0u then (crc >>> 1) ^^^ 0x82F63B78u else crc >>> 1
    crc ^^^ 0xFFFFFFFFu

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant.
let maskedCrc bytes offset count =
    let c = crc32c bytes offset count
    ((c >>> 15) ||| (c <<< 17)) + 0xa282ead8u

/// The records of a TensorBoard event file, each checked against its framing: uint64 length,
/// uint32 masked CRC of the length, the data, uint32 masked CRC of the data; parsed as
/// tensorboard.Event protocol buffers.
let readEvents (path: string) =
    let bytes = File.ReadAllBytes path
    let mutable at = 0
    [ while at < bytes.Length do
          Expect.isLessThanOrEqual (at + 12) bytes.Length $"a whole record header at byte {at}"
          let length = int (BitConverter.ToUInt64(bytes, at))
          Expect.equal (BitConverter.ToUInt32(bytes, at + 8)) (maskedCrc bytes at 8) $"the length's CRC at byte {at}"
          Expect.isLessThanOrEqual (at + 12 + length + 4) bytes.Length $"a whole record at byte {at}"
          Expect.equal (BitConverter.ToUInt32(bytes, at + 12 + length)) (maskedCrc bytes (at + 12) length) $"the data's CRC at byte {at}"
          yield Tensorboard.Event.Parser.ParseFrom(bytes, at + 12, length)
          at <- at + 12 + length + 4 ]

[<Tests>]
let tests =
    testList "NewcomerTests" [
        // ---- CSV files as they come -----------------------------------------------------------
        test "CSV: --skip-rows 1 reads a scikit-learn export (summary line first, no header) end to end, config and eval included" {
            let path = csvFile "iris-sklearn.csv" (irisLike 150 true)
            let run = newDir ()
            let code, out, err = lifting [ "train"; "--data"; path; "--skip-rows"; "1"; "--net"; "4-16-3"; "--epochs"; "3"; "--json"; "--out"; run ]
            Expect.equal code 0 $"exit 0: {err}"
            let config = readJson (Path.Combine(run, "config.json"))
            Expect.equal (config.GetProperty("skip-rows").GetInt32()) 1 "the config records the skipped lines"
            Expect.isFalse (config.GetProperty("no-header").GetBoolean()) "and the header setting"
            let summary = readJson (Path.Combine(run, "summary.json"))
            Expect.equal (text summary "status") "completed" "completed"
            let code, _, err = lifting [ "eval"; run; "--json" ]
            Expect.equal code 0 $"eval reads the file as the run did: {err}"
            let code, _, err = lifting [ "eval"; run; "--data"; path; "--skip-rows"; "1"; "--json" ]
            Expect.equal code 0 $"eval on given data with --skip-rows: {err}"
        }
        test "CSV: a first line alone of another width is named as a summary line, and --skip-rows suggested" {
            let path = csvFile "summary.csv" (irisLike 30 true |> fun t -> t.Replace("30,4,setosa,versicolor,virginica", "30,4,setosa"))
            refused [ "train"; "--data"; path ] [ "line 2 has 5 fields, expected 3 like line 1"; "--skip-rows 1" ] []
        }
        test "CSV: --no-header takes the first row as data" {
            let headed = csvFile "headed.csv" ("width,height,kind\n" + String.Join("\n", [ for i in 0 .. 29 -> $"{i},{i % 3},{i % 2}" ]))
            refused [ "train"; "--data"; headed; "--no-header" ] [ "line 1"; "'width' is not a number" ] []
            let plain = csvFile "plain.csv" (String.Join("\n", [ for i in 0 .. 29 -> $"{i},{i % 3},{i % 2}" ]))
            let code, _, err = lifting [ "train"; "--data"; plain; "--no-header"; "--epochs"; "1"; "--net"; "2-4-2"; "--out"; newDir () ]
            Expect.equal code 0 $"a file without a header trains with --no-header: {err}"
        }
        test "CSV: a UTF-8 byte-order mark is not part of the first column's name" {
            let t = CsvData.Parse("\uFEFFwidth,height,kind\na,2,3\nb,4,5\n", "bom.csv", "width")
            Expect.equal t.Columns.[0] "width" "the first name without the mark"
            Expect.equal t.LabelColumn "width" "--label finds it by name"
            let path = Path.Combine(tempDir (), "bom-file.csv")
            File.WriteAllText(path, "width,height,kind\na,2,3\nb,4,5\n", Text.UTF8Encoding(true))
            Expect.equal (File.ReadAllBytes(path).[0]) 0xEFuy "the file starts with a byte-order mark"
            Expect.equal (CsvData.Read(path, "width")).Columns.[0] "width" "read from a file"
        }

        // ---- Misplaced blame ---------------------------------------------------------------------
        test "blame: --batch larger than the data names --batch, not --net" {
            refused [ "train"; "--batch"; "100000000" ] [ "--batch 100000000"; "1294 training examples" ] [ "--net"; "GiB" ]
        }
        test "blame: --threads -2 says threads must be >= 1, and a flag given twice says so" {
            refused [ "train"; "--threads"; "-2" ] [ "--threads"; "-2"; ">= 1" ] []
            refused [ "train"; "--threads"; "1"; "--threads"; "-2" ] [ "--threads"; "given 2 times"; "give it once" ] [ "expects a single argument" ]
        }
        test "blame: duplicate CSV header names are named with both columns" {
            let path = csvFile "dup.csv" ("x,y,x,label\n" + String.Join("\n", [ for i in 0 .. 29 -> $"{i},{i},oops,{i % 2}" ]))
            refused [ "train"; "--data"; path ] [ "columns 0 and 2 are both named 'x'" ] [ "oops" ]
        }
        test "blame: a header-only CSV says it has no data rows" {
            let path = csvFile "header-only.csv" "a,b,label\n"
            refused [ "train"; "--data"; path ] [ "no data rows" ] [ "not a number" ]
        }
        test "blame: --out in a place no folder can be made names --out, not a file .NET could not find" {
            refused [ "train"; "--out"; "/proc/x" ] [ "--out /proc/x"; "cannot be created" ] [ "Could not find file" ]
        }
        test "blame: 5.1e+300 is finite but outside float32's range, in which CSV data is read" {
            let path = csvFile "huge.csv" ("a,b,label\n" + String.Join("\n", [ for i in 0 .. 29 -> (if i = 7 then "5.1e+300" else string i) + $",1,{i % 2}" ]))
            refused [ "train"; "--data"; path ] [ "line 9"; "'5.1e+300'"; "float32" ] [ "not a finite number" ]
            let infinite = csvFile "inf.csv" ("a,b,label\n" + String.Join("\n", [ for i in 0 .. 29 -> (if i = 7 then "Infinity" else string i) + $",1,{i % 2}" ]))
            refused [ "train"; "--data"; infinite ] [ "'Infinity' is not a finite number" ] []
        }
        test "blame: eval of a run whose weights file was deleted says the file is missing; resume of one whose checkpoint was deleted says so" {
            let dir = newDir ()
            let code, _, err = lifting [ "train"; "--net"; "64-16-10"; "--epochs"; "1"; "--out"; dir ]
            Expect.equal code 0 err
            File.Delete(Path.Combine(dir, "weights-selected.safetensors"))
            refused [ "eval"; dir ] [ "weights-selected.safetensors"; "missing" ] [ "did not complete" ]
            let broken = newDir ()
            let code, _, _ = liftingCancelled [ "train"; "--net"; "64-16-10"; "--epochs"; "3"; "--out"; broken ] (afterEpoch 1)
            Expect.equal code 130 "interrupted after epoch 1"
            File.Delete(Path.Combine(broken, "checkpoint.safetensors"))
            refused [ "resume"; broken ] [ "checkpoint.safetensors"; "missing" ] [ "before its first epoch" ]
        }

        // ---- Selection on a tiny validation split -------------------------------------------------
        test "a validation split too small to select on gets a warning; --select last reports the last epoch" {
            let path = csvFile "iris.csv" (irisLike 150 false)
            let run = newDir ()
            let code, out, err = lifting [ "train"; "--data"; path; "--net"; "4-16-3"; "--epochs"; "3"; "--out"; run ]
            Expect.equal code 0 err
            Expect.stringContains out "warning: the validation split has 12 examples" "a warning names the split's size"
            Expect.stringContains out "--select last" "and the way out"
            let last = newDir ()
            let code, _, err = lifting [ "train"; "--data"; path; "--net"; "4-16-3"; "--epochs"; "3"; "--select"; "last"; "--out"; last ]
            Expect.equal code 0 err
            let summary = readJson (Path.Combine(last, "summary.json"))
            Expect.equal (text summary "selected_by") "last_epoch" "selected by the last epoch"
            Expect.equal (summary.GetProperty("selected_epoch").GetInt32()) 3 "the last epoch"
            Expect.equal (summary.GetProperty("test_accuracy").GetDouble()) (summary.GetProperty("final_test_accuracy").GetDouble()) "its test accuracy is the final one"
            Expect.equal (text (readJson (Path.Combine(last, "config.json"))) "select") "last" "the config records it"
            let digits = newDir ()
            let code, out, err = lifting [ "train"; "--net"; "64-16-10"; "--epochs"; "1"; "--out"; digits ]
            Expect.equal code 0 err
            Expect.isFalse (out.Contains "warning:") $"no warning for the digits' 144 validation examples: {out}"
        }

        // ---- Numbers as people read them ---------------------------------------------------------
        test "defects print as 4.20e-01, not 4.20E-001" {
            let m = EpochMetrics(1, 0.5, 0.6, 0.5, Evaluation(0.9, 0.3), Evaluation(0.8, 0.4), 1.0, [| 0.42; 0.047 |], 0.1, [| 612.0; 0.0123 |], Nullable(), readOnlyDict [])
            let line = Progress.FormatEpoch(m, 3)
            Expect.stringContains line "defect 4.20e-01/4.70e-02" $"defects: {line}"
            Expect.stringContains line "|λ|² 6.12e+02/1.23e-02" $"multiplier norms: {line}"
            Expect.isFalse (line.Contains "E-0" || line.Contains "E+0") $"no three-digit exponents: {line}"
        }
        test "the penalty's closing line reports the defect the table reports (before the feasibility pass), and the pass's" {
            let dir = newDir ()
            let code, out, err = lifting [ "train"; "--method"; "penalty"; "--net"; "64-16-16-10"; "--epochs"; "2"; "--out"; dir ]
            Expect.equal code 0 err
            let summary = readJson (Path.Combine(dir, "summary.json"))
            let before = summary.GetProperty("defect_before_finish").GetDouble()
            Expect.isGreaterThan before 0.0 "the penalty leaves a defect before its feasibility pass"
            let closing = out.Split('\n') |> Array.find (fun l -> l.StartsWith "selected epoch")
            let shown = Regex.Match(closing, @"defect ([0-9.]+e[+-][0-9]+)")
            Expect.isTrue shown.Success $"the closing line shows a defect in e-notation: {closing}"
            Expect.isLessThan (abs (Double.Parse(shown.Groups.[1].Value, invariant) - before)) (0.006 * before) $"the defect before the pass, to three digits: {closing}"
            Expect.stringContains closing "after the feasibility pass" "and says what the pass left"
        }

        // ---- Checkpoints that cannot resume silently --------------------------------------------
        test "a checkpoint or weights file with a flipped byte (in the tensors or the metadata) is refused with one line; an intact one resumes" {
            let start () =
                let dir = newDir ()
                let code, _, _ = liftingCancelled [ "train"; "--net"; "64-16-10"; "--epochs"; "3"; "--out"; dir ] (afterEpoch 1)
                Expect.equal code 130 "interrupted after epoch 1"
                dir
            let flip (path: string) (at: int64 -> byte[] -> int) =
                let bytes = File.ReadAllBytes path
                let i = at (BitConverter.ToInt64(bytes, 0)) bytes
                bytes.[i] <- bytes.[i] ^^^ 0x01uy
                File.WriteAllBytes(path, bytes)
            // The last byte of the data section: a bit of the generator state or a weight.
            let payload = start ()
            flip (Path.Combine(payload, "checkpoint.safetensors")) (fun _ bytes -> bytes.Length - 1)
            refused [ "resume"; payload ] [ "checkpoint.safetensors"; "checksum" ] []
            // A digit of the trainer state in the metadata ("CompletedEpochs":1 becomes 0), the JSON still valid.
            let metadata = start ()
            flip (Path.Combine(metadata, "checkpoint.safetensors")) (fun length bytes ->
                let header = Text.Encoding.UTF8.GetString(bytes, 8, int length)
                8 + Text.Encoding.UTF8.GetByteCount(header.Substring(0, header.IndexOf("CompletedEpochs") + "CompletedEpochs\\u0022:".Length)))
            refused [ "resume"; metadata ] [ "checksum" ] []
            let intact = start ()
            let code, _, err = lifting [ "resume"; intact ]
            Expect.equal code 0 $"an intact checkpoint resumes: {err}"
            flip (Path.Combine(intact, "weights-selected.safetensors")) (fun _ bytes -> bytes.Length - 2)
            refused [ "eval"; intact ] [ "weights-selected.safetensors"; "checksum" ] []
        }

        // ---- Extending a run ---------------------------------------------------------------------
        test "resume --epochs N extends a completed run, and an interrupted one, to N epochs: for backprop (no schedule over the planned count) it ends byte for byte as a run planned with N; shortening is refused" {
            let settings = [ "--net"; "64-16-10"; "--epochs"; "2" ]
            let whole = newDir ()
            let code, _, err = lifting [ "train"; "--net"; "64-16-10"; "--epochs"; "4"; "--out"; whole ]
            Expect.equal code 0 err
            let completed = newDir ()
            let code, _, err = lifting ([ "train" ] @ settings @ [ "--out"; completed ])
            Expect.equal code 0 err
            refused [ "resume"; completed ] [ "completed"; "--epochs N" ] []
            refused [ "resume"; completed; "--epochs"; "1" ] [ "--epochs 1"; "fewer than the 2" ] []
            let code, _, err = lifting [ "resume"; completed; "--epochs"; "4" ]
            Expect.equal code 0 $"extending a completed run: {err}"
            let interrupted = newDir ()
            let code, _, _ = liftingCancelled ([ "train" ] @ settings @ [ "--out"; interrupted ]) (afterEpoch 1)
            Expect.equal code 130 "interrupted after epoch 1"
            let code, _, err = lifting [ "resume"; interrupted; "--epochs"; "4" ]
            Expect.equal code 0 $"extending an interrupted run: {err}"
            for dir in [ completed; interrupted ] do
                for f in [ "weights.safetensors"; "weights-selected.safetensors"; "metrics.jsonl"; "summary.json"; "config.json" ] do
                    Expect.sequenceEqual (bytes dir f) (bytes whole f) $"{f}: the extended run ends as the run planned with 4 epochs"
            refused [ "resume"; completed; "--epochs"; "3" ] [ "fewer than the 4" ] []
        }

        // ---- TensorBoard ---------------------------------------------------------------------------
        test "every run folder gets a TensorBoard event file: valid TFRecord framing, scalars per epoch (losses, accuracies, lifted objective, defects and multiplier norms per block, diagnostics) and every N mini-batches, weight histograms" {
            let find (dir: string) =
                let files = Directory.GetFiles(dir, "events.out.tfevents.*")
                Expect.equal files.Length 1 $"one event file in {dir}"
                readEvents files.[0]
            let values (events: Tensorboard.Event list) =
                [ for e in events do
                      if not (isNull e.Summary) then
                          for v in e.Summary.Value -> v.Tag, e.Step, v ]
            let extraprop = newDir ()
            let code, _, err = lifting [ "train"; "--method"; "extraprop"; "--net"; "64-16-16-10"; "--epochs"; "2"; "--log-every"; "5"; "--out"; extraprop ]
            Expect.equal code 0 err
            let events = find extraprop
            Expect.equal events.Head.FileVersion "brain.Event:2" "the file starts with its version record"
            let tagged = values events
            let tags = tagged |> List.map (fun (t, _, _) -> t) |> set
            for tag in [ "loss/train"; "loss/validation"; "loss/test"; "accuracy/validation"; "accuracy/test"; "lifted/objective"; "lifted/loss_term"
                         "defect/mean"; "defect/block1"; "defect/block2"; "defect/last_batch"; "multipliers/block1"; "multipliers/block2"; "time/epoch_seconds"
                         "batch/loss"; "batch/lifted_objective" ] do
                Expect.contains tags tag $"the tag {tag}"
            let metrics = File.ReadAllLines(Path.Combine(extraprop, "metrics.jsonl")) |> Array.map (fun l -> Text.Json.JsonDocument.Parse(l).RootElement)
            for epoch in 1 .. 2 do
                let _, _, v = tagged |> List.find (fun (t, s, _) -> t = "loss/train" && s = int64 epoch)
                Expect.floatClose Accuracy.medium (float v.SimpleValue) (metrics.[epoch - 1].GetProperty("train_loss").GetDouble()) $"loss/train at epoch {epoch} is the metrics' train loss"
            let batchSteps = tagged |> List.filter (fun (t, _, _) -> t = "batch/loss") |> List.map (fun (_, s, _) -> s)
            let perEpoch = (1294 + 63) / 64
            Expect.equal batchSteps [ for s in 5 .. 5 .. 2 * perEpoch -> int64 s ] "batch/loss every 5 mini-batches, counted from the start"
            let histograms = tagged |> List.filter (fun (t, _, v) -> t.StartsWith "weights/" && not (isNull v.Histo))
            let histogramTags = histograms |> List.map (fun (t, _, _) -> t) |> set
            Expect.equal histogramTags.Count 6 $"a histogram of each of the 6 weight tensors: {histogramTags}"
            Expect.equal (histograms |> List.map (fun (_, s, _) -> s) |> List.distinct |> List.sort) [ 1L; 2L ] "per epoch"
            for _, _, v in histograms do Expect.isGreaterThan v.Histo.Num 0.0 "each counts the tensor's values"
            let penalty = newDir ()
            let code, _, err = lifting [ "train"; "--method"; "penalty"; "--net"; "64-16-16-10"; "--epochs"; "1"; "--log-every"; "0"; "--out"; penalty ]
            Expect.equal code 0 err
            let tags = values (find penalty) |> List.map (fun (t, _, _) -> t) |> set
            Expect.contains tags "diagnostics/mu" "the formulation's diagnostics (the penalty's μ)"
            Expect.isFalse (tags.Contains "batch/loss") "--log-every 0: per epoch only"
        }

        // ---- bench -------------------------------------------------------------------------------
        test "bench refuses --epochs 1, and a method that settles in every epoch after the first, before anything trains" {
            for args, fragment in [ [ "bench"; "--data"; "digits"; "--net"; "64-16-10"; "--epochs"; "1"; "--methods"; "backprop,extraprop" ], "--epochs 1"
                                    [ "bench"; "--data"; "digits"; "--net"; "64-16-10"; "--epochs"; "2"; "--methods"; "backprop,extraprop:settle=0.5" ], "settles" ] do
                let code, out, err = lifting args
                Expect.equal code 2 $"exit 2: {err}"
                Expect.stringContains err fragment "names the problem"
                Expect.equal (err.Trim().Split('\n').Length) 1 $"one line: {err}"
                Expect.equal out "" "nothing printed, so nothing trained"
        }
        test "bench's per-example figure says what it holds: DistProp at its defaults keeps the first cut's multipliers per example (H floats), with per-class multipliers nothing" {
            let code, out, err = lifting [ "bench"; "--data"; "digits"; "--net"; "64-32-10"; "--epochs"; "2"; "--repeats"; "1"; "--methods"; "distprop,distprop:multipliers=class"; "--json" ]
            Expect.equal code 0 err
            use doc = Text.Json.JsonDocument.Parse(lastLine out)
            let rows = doc.RootElement.EnumerateArray() |> Array.ofSeq
            let variables (r: Text.Json.JsonElement) = [ for p in r.GetProperty("per_example_variables").EnumerateObject() -> p.Name, p.Value.GetInt64() ]
            Expect.equal (rows.[0].GetProperty("per_example_bytes").GetInt64()) 128L "32 multipliers of 4 bytes per example"
            Expect.equal (variables rows.[0]) [ "lambda1", 128L ] "all of them the first cut's multipliers"
            Expect.equal (rows.[1].GetProperty("per_example_bytes").GetInt64()) 0L "per-class multipliers: nothing per example"
            Expect.isEmpty (variables rows.[1]) "and no variable"
            Expect.stringContains out "per-example state 128 B (lambda1 128 B)" "the table line names the variable"
        }

        // ---- The test runner ---------------------------------------------------------------------
        test "the test runner prints a plain line per test as it finishes (no ANSI escapes when redirected) and ends with 'N passed, N failed'" {
            let info = Diagnostics.ProcessStartInfo("dotnet", RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
            info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Lifting.Tests.dll"))
            for a in [ "--filter"; "CsvDataTests" ] do info.ArgumentList.Add a
            use p = match Diagnostics.Process.Start info with null -> failwith "could not start dotnet" | p -> p
            let out = p.StandardOutput.ReadToEndAsync()
            let err = p.StandardError.ReadToEndAsync()
            p.WaitForExit()
            Expect.equal p.ExitCode 0 $"the filtered run passes: {err.Result}"
            let text = out.Result
            Expect.isFalse (text.Contains '\u001b') $"no ANSI escapes in redirected output: {text}"
            let lines = text.Split('\n') |> Array.map (fun l -> l.TrimEnd())
            let finished = lines |> Array.filter (fun l -> Regex.IsMatch(l, @"^\[\d+/6\] ok +[0-9.]+ s  CsvDataTests\."))
            Expect.equal finished.Length 6 $"one line per test with its name and time: {text}"
            Expect.equal (lines |> Array.filter (fun l -> l <> "") |> Array.last) "6 passed, 0 failed" "the closing line"
        }
    ]
