module Lifting.Tests.DataTests

open System
open System.IO
open Expecto
open TorchSharp
open type TorchSharp.torch
open Lifting.Data

let tempDir () = Lifting.Tests.Support.scratchDir "data"

let images count rows cols =
    IdxImages(count, rows, cols, Array.init (count * rows * cols) (fun i -> byte (i % 251)))

let expectFormatError (f: unit -> unit) (fragments: string list) =
    let ex = Expect.throwsC f id
    Expect.equal (ex.GetType()) typeof<DataFormatException> $"a DataFormatException: {ex.Message}"
    Expect.isFalse (ex.Message.Contains('\n')) "one line"
    for fragment in fragments do Expect.stringContains ex.Message fragment $"message names '{fragment}'"

/// Writes an IDX dataset folder with the given train/test sizes.
let writeIdxFolder (dir: string) (train: int) (test: int) =
    Idx.WriteImages(Path.Combine(dir, "train-images-idx3-ubyte.gz"), images train 4 4, true)
    Idx.WriteLabels(Path.Combine(dir, "train-labels-idx1-ubyte.gz"), Array.init train (fun i -> byte (i % 10)), true)
    Idx.WriteImages(Path.Combine(dir, "t10k-images-idx3-ubyte"), images test 4 4, false)
    Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.init test (fun i -> byte (i % 10)), false)

[<Tests>]
let tests =
    testList "DataTests" [
        test "IDX images and labels round-trip, gzip and raw" {
            let dir = tempDir ()
            for gzip in [ true; false ] do
                let imgPath = Path.Combine(dir, $"img-{gzip}")
                let lblPath = Path.Combine(dir, $"lbl-{gzip}")
                let written = images 5 3 2
                Idx.WriteImages(imgPath, written, gzip)
                Idx.WriteLabels(lblPath, [| 0uy; 9uy; 3uy; 3uy; 1uy |], gzip)
                let read = Idx.ReadImages imgPath
                Expect.equal (read.Count, read.Rows, read.Columns) (5, 3, 2) "dimensions"
                Expect.sequenceEqual read.Pixels written.Pixels "pixels"
                Expect.sequenceEqual (Idx.ReadLabels lblPath) [| 0uy; 9uy; 3uy; 3uy; 1uy |] "labels"
        }
        test "malformed IDX: bad magic, truncated, trailing bytes" {
            let dir = tempDir ()
            let labels = Path.Combine(dir, "labels.idx")
            Idx.WriteLabels(labels, [| 1uy; 2uy |], false)
            expectFormatError (fun () -> Idx.ReadImages labels |> ignore) [ "labels.idx"; "magic" ]
            let truncated = Path.Combine(dir, "truncated.idx")
            Idx.WriteImages(truncated, images 4 2 2, false)
            let bytes = File.ReadAllBytes truncated
            File.WriteAllBytes(truncated, bytes.[.. bytes.Length - 5])
            expectFormatError (fun () -> Idx.ReadImages truncated |> ignore) [ "truncated.idx"; "truncated" ]
            let tiny = Path.Combine(dir, "tiny.idx")
            File.WriteAllBytes(tiny, [| 0uy; 0uy |])
            expectFormatError (fun () -> Idx.ReadLabels tiny |> ignore) [ "tiny.idx"; "truncated" ]
            let long = Path.Combine(dir, "long.idx")
            File.WriteAllBytes(long, Array.append (File.ReadAllBytes labels) [| 7uy |])
            expectFormatError (fun () -> Idx.ReadLabels long |> ignore) [ "long.idx"; "unexpected" ]
        }
        test "an IDX folder loads; label out of range and count mismatch are reported" {
            let dir = tempDir ()
            writeIdxFolder dir 30 10
            let split = DatasetCatalog.Load dir
            Expect.equal (split.Train.Count, split.Validation.Count) (27, 3) "train count, 10 % held out for validation"
            Expect.sequenceEqual split.Test.ExampleShape [| 1L; 4L; 4L |] "example shape"
            Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.init 10 (fun i -> if i = 4 then 12uy else 0uy), false)
            expectFormatError (fun () -> DatasetCatalog.Load dir |> ignore) [ "t10k-labels-idx1-ubyte"; "12"; "index 4" ]
            Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.zeroCreate 9, false)
            expectFormatError (fun () -> DatasetCatalog.Load dir |> ignore) [ "t10k-labels-idx1-ubyte"; "9 labels"; "10 images" ]
        }
        test "IDX labels: the class count itself is out of range, one below it is a class" {
            let dir = tempDir ()
            writeIdxFolder dir 20 10
            Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.init 10 (fun i -> if i = 3 then 10uy else 9uy), false)
            expectFormatError (fun () -> DatasetCatalog.Load dir |> ignore) [ "t10k-labels-idx1-ubyte"; "label 10"; "index 3" ]
            Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.create 10 9uy, false)
            use split = DatasetCatalog.Load dir
            Expect.equal (split.Test.Labels.max().ToInt64()) 9L "label 9 of 10 classes loads"
        }
        test "the validation split is carved from the training set: disjoint, fixed by its seed, sized by the fraction" {
            // Label every training image by its index (pixel 0) to see which examples went where.
            let dir = tempDir ()
            let n = 50
            Idx.WriteImages(Path.Combine(dir, "train-images-idx3-ubyte"), IdxImages(n, 1, 1, Array.init n byte), false)
            Idx.WriteLabels(Path.Combine(dir, "train-labels-idx1-ubyte"), Array.init n (fun i -> byte (i % 10)), false)
            Idx.WriteImages(Path.Combine(dir, "t10k-images-idx3-ubyte"), IdxImages(5, 1, 1, Array.create 5 0uy), false)
            Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.create 5 0uy, false)
            let ids (split: DataSplit) (d: Dataset) =
                let norm = split.Normalisation
                let raw = (d.Inputs.flatten() * norm.Std + norm.Mean) * 255.0
                raw.round().to_type(ScalarType.Int64).data<int64>().ToArray()
            use a = DatasetCatalog.Load(dir, DataOptions(ValidationFraction = 0.2))
            let train, validation = ids a a.Train, ids a a.Validation
            Expect.equal (train.Length, validation.Length) (40, 10) "20 % of 50 held out"
            Expect.sequenceEqual (Array.sort (Array.append train validation)) [| 0L .. 49L |] "together exactly the training set"
            Expect.isEmpty (Set.intersect (Set.ofArray train) (Set.ofArray validation)) "disjoint"
            Expect.sequenceEqual train (Array.sort train) "training examples keep their order"
            use b = DatasetCatalog.Load(dir, DataOptions(ValidationFraction = 0.2))
            Expect.sequenceEqual (ids b b.Validation) validation "the same seed picks the same examples"
            use c = DatasetCatalog.Load(dir, DataOptions(ValidationFraction = 0.2, SplitSeed = 5))
            Expect.isFalse (ids c c.Validation = validation) "another seed picks others"
            // Standardisation statistics come from the training part only.
            let mean = train |> Array.averageBy (fun v -> Convert.ToDouble v / 255.0)
            Expect.floatClose Accuracy.medium a.Normalisation.Mean mean "mean of the training part"
            use none = DatasetCatalog.Load(dir, DataOptions(ValidationFraction = 0.0))
            Expect.equal (none.Train.Count, none.Validation.Count) (50, 0) "fraction 0: no validation split"
            let ex = Expect.throwsC (fun () -> DatasetCatalog.Load(dir, DataOptions(ValidationFraction = 1.0)) |> ignore) id
            Expect.stringContains ex.Message "validation fraction" "an impossible fraction is named"
        }
        test "training and test examples of different shapes are refused when loading" {
            let dir = tempDir ()
            Idx.WriteImages(Path.Combine(dir, "train-images-idx3-ubyte"), images 20 4 4, false)
            Idx.WriteLabels(Path.Combine(dir, "train-labels-idx1-ubyte"), Array.create 20 1uy, false)
            Idx.WriteImages(Path.Combine(dir, "t10k-images-idx3-ubyte"), images 5 3 3, false)
            Idx.WriteLabels(Path.Combine(dir, "t10k-labels-idx1-ubyte"), Array.create 5 1uy, false)
            expectFormatError (fun () -> DatasetCatalog.Load dir |> ignore) [ "1×4×4"; "1×3×3" ]
        }
        test "CSV errors name the file, line and problem" {
            let dir = tempDir ()
            let row = String.Join(",", Array.create 64 "3") + ",7"
            let write name (text: string) = let p = Path.Combine(dir, name) in File.WriteAllText(p, text); p
            expectFormatError (fun () -> DatasetCatalog.Load(write "cols.csv" (row + "\n1,2,3\n")) |> ignore) [ "cols.csv"; "line 2"; "fields" ]
            expectFormatError (fun () -> DatasetCatalog.Load(write "nan.csv" (row + "\n" + row.Replace("3,3,3", "3,NaN,3") + "\n")) |> ignore) [ "nan.csv"; "NaN" ]
            expectFormatError (fun () -> DatasetCatalog.Load(write "label.csv" (row + "\n" + row.Substring(0, row.Length - 1) + "\n")) |> ignore) [ "label.csv"; "line 2"; "empty label" ]
            expectFormatError (fun () -> DatasetCatalog.Load "no-such-dataset" |> ignore) [ "no-such-dataset"; "digits" ]
        }
        test "embedded digits: 1797 rows split 1294 train / 144 validation / 359 test, finite, standardised on train" {
            let split = DatasetCatalog.Load "digits"
            Expect.equal split.Train.Count 1294 "train"
            Expect.equal split.Validation.Count 144 "validation: 10 % of the 1438 training rows"
            Expect.equal split.Test.Count 359 "test"
            Expect.sequenceEqual split.Train.ExampleShape [| 1L; 8L; 8L |] "8×8 images"
            Expect.isTrue (split.Train.Inputs.isfinite().all().ToBoolean()) "finite"
            Expect.isLessThan (Math.Abs(split.Train.Inputs.mean().ToDouble())) 1e-5 "mean 0"
            Expect.floatClose Accuracy.medium (split.Train.Inputs.std().ToDouble()) 1.0 "std 1"
            Expect.equal split.Train.ClassCount 10 "ten classes"
        }
        test "unit-range scaling keeps inputs in [0, 1], unstandardised, on every split" {
            use split = DatasetCatalog.Load("mnist-10k", DataOptions(Scaling = InputScaling.UnitRange))
            Expect.equal split.Normalisation (Normalisation(0.0, 1.0)) "no standardisation"
            for d in [ split.Train; split.Validation; split.Test ] do
                Expect.equal (d.Inputs.min().ToDouble()) 0.0 $"{d.Name}: black pixels are 0"
                Expect.equal (d.Inputs.max().ToDouble()) 1.0 $"{d.Name}: white pixels are 1"
            use standardised = DatasetCatalog.Load "mnist-10k"
            Expect.isLessThan (standardised.Train.Inputs.min().ToDouble()) -0.1 "the default standardises"
        }
        test "embedded mnist-10k: 7200 train / 800 validation / 2000 test images of 1×28×28" {
            let split = DatasetCatalog.Load "mnist-10k"
            Expect.equal (split.Train.Count, split.Validation.Count, split.Test.Count) (7200, 800, 2000) "sizes"
            Expect.sequenceEqual split.Train.ExampleShape [| 1L; 28L; 28L |] "shape"
        }
        test "every example appears exactly once per epoch, last batch partial" {
            let split = DatasetCatalog.Load "digits"
            let batches = MiniBatches.Epoch(split.Train, 100, 3, 1) |> Array.ofSeq
            Expect.equal batches.Length 13 "ceil(1294/100)"
            Expect.equal batches.[12].Size 94L "partial last batch"
            let seen = batches |> Array.collect (fun b -> b.Indices.data<int64>().ToArray()) |> Array.sort
            Expect.sequenceEqual seen [| 0L .. 1293L |] "a permutation of all examples"
        }
        test "batches are deterministic per (seed, epoch) and carry their rows" {
            let split = DatasetCatalog.Load "digits"
            let order seed epoch = MiniBatches.Epoch(split.Train, 64, seed, epoch) |> Seq.collect (fun b -> b.Indices.data<int64>().ToArray()) |> Array.ofSeq
            Expect.sequenceEqual (order 1 2) (order 1 2) "same seed and epoch"
            Expect.isFalse (order 1 2 = order 1 3) "another epoch reshuffles"
            let b = MiniBatches.Epoch(split.Train, 64, 1, 1) |> Seq.head
            Expect.equal ((b.Inputs - split.Train.Inputs.index_select(0L, b.Indices)).abs().max().ToDouble()) 0.0 "inputs are the indexed rows"
            Expect.equal ((b.Labels - split.Train.Labels.index_select(0L, b.Indices)).abs().max().ToInt64()) 0L "labels are the indexed rows"
            Expect.throwsT<ArgumentOutOfRangeException> (fun () -> MiniBatches.Epoch(split.Train, 0, 1, 1) |> Seq.head |> ignore) "batch size 0"
        }
    ]
