// Bio-Formats on OME companion files, for tests/test_plate_views.py: one JVM for several files.
// `java -cp bioformats_package.jar CompanionProbe.java FILE...` prints, per file: the reader's
// format, the series count, the plate (name, rows, columns), each well (row, column, the
// images of its samples), each series (name, sizes, pixel type, physical sizes in um and time
// increment in s, or "null", and channel names) and, for the first and last series, each
// plane's (c, z, t) with the sum and a position-weighted sum of its pixel values.
import loci.common.DebugTools;
import loci.common.services.ServiceFactory;
import loci.formats.FormatTools;
import loci.formats.ImageReader;
import loci.formats.meta.IMetadata;
import loci.formats.services.OMEXMLService;
import ome.units.UNITS;

public class CompanionProbe {
  static String um(ome.units.quantity.Length q) {
    return q == null ? "null" : String.valueOf(q.value(UNITS.MICROMETER).doubleValue());
  }

  static String seconds(ome.units.quantity.Time q) {
    return q == null ? "null" : String.valueOf(q.value(UNITS.SECOND).doubleValue());
  }

  public static void main(String[] args) throws Exception {
    DebugTools.setRootLevel("ERROR");
    OMEXMLService svc = new ServiceFactory().getInstance(OMEXMLService.class);
    for (String path : args) {
      IMetadata meta = svc.createOMEXMLMetadata();
      ImageReader r = new ImageReader();
      r.setMetadataStore(meta);
      r.setId(path);
      System.out.println("FILE\t" + path);
      System.out.println("FORMAT\t" + r.getFormat());
      System.out.println("SERIES\t" + r.getSeriesCount());
      for (int p = 0; p < meta.getPlateCount(); p++) {
        System.out.println("PLATE\t" + meta.getPlateName(p) + "\t" + meta.getPlateRows(p) + "\t"
                           + meta.getPlateColumns(p));
        for (int w = 0; w < meta.getWellCount(p); w++) {
          StringBuilder refs = new StringBuilder();
          for (int s = 0; s < meta.getWellSampleCount(p, w); s++)
            refs.append("\t").append(meta.getWellSampleImageRef(p, w, s));
          System.out.println("WELL\t" + meta.getWellRow(p, w) + "\t" + meta.getWellColumn(p, w) + refs);
        }
      }
      for (int s = 0; s < r.getSeriesCount(); s++) {
        r.setSeries(s);
        StringBuilder ch = new StringBuilder();
        for (int c = 0; c < meta.getChannelCount(s); c++) ch.append("\t").append(meta.getChannelName(s, c));
        System.out.println("IMAGE\t" + s + "\t" + meta.getImageID(s) + "\t" + meta.getImageName(s) + "\t"
            + r.getSizeX() + "\t" + r.getSizeY() + "\t" + r.getSizeC() + "\t" + r.getSizeZ() + "\t"
            + r.getSizeT() + "\t" + FormatTools.getPixelTypeString(r.getPixelType()) + "\t"
            + um(meta.getPixelsPhysicalSizeX(s)) + "\t" + um(meta.getPixelsPhysicalSizeY(s)) + "\t"
            + um(meta.getPixelsPhysicalSizeZ(s)) + "\t" + seconds(meta.getPixelsTimeIncrement(s)) + ch);
        if (s != 0 && s != r.getSeriesCount() - 1) continue;
        int bpp = FormatTools.getBytesPerPixel(r.getPixelType());
        boolean little = r.isLittleEndian();
        for (int i = 0; i < r.getImageCount(); i++) {
          byte[] b = r.openBytes(i);
          int[] zct = r.getZCTCoords(i);
          long sum = 0, wsum = 0;
          for (int k = 0; k < b.length / bpp; k++) {
            long v = 0;
            for (int j = 0; j < bpp; j++) {
              int at = little ? k * bpp + (bpp - 1 - j) : k * bpp + j;
              v = (v << 8) | (b[at] & 0xff);
            }
            sum += v;
            wsum += v * (k % 7919);
          }
          System.out.println("PIXELS\t" + s + "\t" + zct[1] + "\t" + zct[0] + "\t" + zct[2] + "\t" + sum + "\t" + wsum);
        }
      }
      r.close();
    }
    System.exit(0);
  }
}
