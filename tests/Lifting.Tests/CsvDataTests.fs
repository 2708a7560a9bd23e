module Lifting.Tests.CsvDataTests

open System
open System.IO
open Expecto
open TorchSharp
open Lifting.Data
open Lifting.Tests.DataTests

let write (name: string) (text: string) =
    let path = Path.Combine(tempDir (), name)
    File.WriteAllText(path, text)
    path

[<Tests>]
let tests =
    testList "CsvDataTests" [
        test "a header is detected when its fields are not numbers above numbers; none otherwise" {
            let t = CsvData.Parse("width,height,kind\n1,2,a\n3,4,b\n", "h.csv")
            Expect.sequenceEqual t.Columns [ "width"; "height"; "kind" ] "header names"
            Expect.equal t.Count 2 "the header is not a row"
            let u = CsvData.Parse("1,2,a\n3,4,b\n", "n.csv")
            Expect.equal u.Count 2 "no header: every line is a row"
            Expect.sequenceEqual u.Columns [ "column 0"; "column 1"; "column 2" ] "columns numbered"
        }
        test "the label column by name, by index and from the end; the last by default" {
            let text = "a,label,b\n1,x,2\n3,y,4\n5,x,6\n"
            let byName = CsvData.Parse(text, "l.csv", "label")
            Expect.equal byName.LabelColumn "label" "by name"
            Expect.sequenceEqual byName.Features [| 1f; 2f; 3f; 4f; 5f; 6f |] "the other columns are the features, in order"
            Expect.equal (CsvData.Parse(text, "l.csv", "1")).LabelColumn "label" "by 0-based index"
            Expect.equal (CsvData.Parse(text, "l.csv", "-2")).LabelColumn "label" "from the end"
            Expect.equal (CsvData.Parse("a,b,c\n1,2,3\n4,5,6\n", "d.csv")).LabelColumn "c" "the last column by default"
        }
        test "string labels map to classes in ordinal order, integer labels in numeric order; fixed class names map and refuse" {
            let s = CsvData.Parse("1,pear\n2,apple\n3,fig\n4,apple\n", "s.csv")
            Expect.sequenceEqual s.ClassNames [ "apple"; "fig"; "pear" ] "ordinal order"
            Expect.sequenceEqual s.Labels [| 2L; 0L; 1L; 0L |] "labels are class indices"
            let n = CsvData.Parse("1,10\n2,9\n3,2\n", "i.csv")
            Expect.sequenceEqual n.ClassNames [ "2"; "9"; "10" ] "numeric, not ordinal, order"
            let fixedNames = CsvData.Parse("1,fig\n2,pear\n", "f.csv", null, [| "pear"; "fig"; "apple" |])
            Expect.sequenceEqual fixedNames.Labels [| 1L; 0L |] "a trained network's classes fix the mapping"
            expectFormatError (fun () -> CsvData.Parse("1,kiwi\n", "k.csv", null, [| "pear"; "fig" |]) |> ignore) [ "k.csv"; "line 1"; "kiwi" ]
        }
        test "quoted fields, tabs and CRLF line ends are read" {
            let q = CsvData.Parse("\"a, b\",c\r\n\"1\",\"x \"\"y\"\"\"\r\n2,z\r\n", "q.csv")
            Expect.sequenceEqual q.Columns [ "a, b"; "c" ] "a separator inside quotes"
            Expect.sequenceEqual q.ClassNames [ "x \"y\""; "z" ] "doubled quotes"
            let t = CsvData.Parse("1\t2\ta\n3\t4\tb\n", "t.tsv")
            Expect.equal t.FeatureCount 2 "tab-separated"
        }
        test "CSV errors name the file, the line and the column" {
            expectFormatError (fun () -> CsvData.Parse("a,b,y\n1,,x\n", "m.csv") |> ignore) [ "m.csv"; "line 2"; "column 'b'"; "empty" ]
            expectFormatError (fun () -> CsvData.Parse("a,b,y\n1,2,x\n1,two,y\n", "w.csv") |> ignore) [ "w.csv"; "line 3"; "'two' is not a number" ]
            expectFormatError (fun () -> CsvData.Parse("1,2,x\n3,4,x\n", "o.csv") |> ignore) [ "o.csv"; "single class" ]
            expectFormatError (fun () -> CsvData.Parse("\"1,2,x\n", "u.csv") |> ignore) [ "u.csv"; "unterminated" ]
            expectFormatError (fun () -> CsvData.Parse("a,b\n1,x\n", "n.csv", "c") |> ignore) [ "n.csv"; "no column 'c'" ]
            expectFormatError (fun () -> CsvData.Parse("1,x\n2,y\n", "h.csv", "kind") |> ignore) [ "h.csv"; "no header" ]
            expectFormatError (fun () -> CsvData.Parse("1,x\n2,y\n", "i.csv", "5") |> ignore) [ "i.csv"; "outside the 2 columns" ]
            expectFormatError (fun () -> CsvData.Read(write "nul.csv" "1,2\u0000,x\n") |> ignore) [ "nul.csv"; "NUL" ]
        }
        test "loading a CSV: test split by the test fraction and the split seed, per-feature standardisation from the training part only" {
            let rows = [ for i in 0 .. 99 -> let parity = (if i % 2 = 0 then "even" else "odd") in $"{i},{1000 + 10 * i},{parity}" ]
            let path = write "data.csv" (String.Join("\n", "id,big,parity" :: rows))
            use split = DatasetCatalog.Load(path, DataOptions(TestFraction = Nullable 0.25, ValidationFraction = 0.2))
            Expect.equal (split.Train.Count, split.Validation.Count, split.Test.Count) (60, 15, 25) "25 % test, then 20 % of the rest for validation"
            Expect.sequenceEqual split.Train.ExampleShape [| 2L |] "tabular: one value per feature"
            Expect.sequenceEqual split.ClassNames [ "even"; "odd" ] "the class names"
            let mean = split.Train.Inputs.mean([| 0L |]).data<float32>().ToArray()
            let std = split.Train.Inputs.std(0L, false).data<float32>().ToArray()
            for j in 0 .. 1 do
                Expect.isLessThan (abs (float mean.[j])) 1e-4 $"feature {j}: mean 0 on the training part"
                Expect.floatClose Accuracy.medium (float std.[j]) 1.0 $"feature {j}: std 1 on the training part"
            Expect.isTrue split.Normalisation.PerFeature "per-feature statistics"
            // Undo the standardisation of the first feature (the row id) to see which rows went where.
            let ids (d: Dataset) =
                let n = split.Normalisation
                (d.Inputs.select(1L, 0L) * n.FeatureStds.[0] + n.FeatureMeans.[0]).round().to_type(torch.ScalarType.Int64).data<int64>().ToArray()
            let all = Array.concat [ ids split.Train; ids split.Validation; ids split.Test ] |> Array.sort
            Expect.sequenceEqual all [| 0L .. 99L |] "every row in exactly one split"
            use again = DatasetCatalog.Load(path, DataOptions(TestFraction = Nullable 0.25, ValidationFraction = 0.2))
            Expect.sequenceEqual (ids again.Test) (ids split.Test) "the same seed, the same test rows"
            use other = DatasetCatalog.Load(path, DataOptions(TestFraction = Nullable 0.25, ValidationFraction = 0.2, SplitSeed = 1))
            Expect.isFalse (ids other.Test = ids split.Test) "another split seed, other test rows"
            use fixedStats = DatasetCatalog.Load(path, DataOptions(FixedNormalisation = split.Normalisation, ClassNames = [| "odd"; "even" |]))
            Expect.equal fixedStats.Normalisation split.Normalisation "given statistics are used as they are"
            Expect.sequenceEqual fixedStats.ClassNames [ "odd"; "even" ] "given class names are used as they are"
        }
    ]
