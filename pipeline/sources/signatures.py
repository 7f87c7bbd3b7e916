"""Per-class spectral and backscatter tables of the synthetic world.

Every table is indexed by the Dynamic World class id (row order of :data:`pipeline.bands.DW_CLASSES`) and,
for Sentinel-2, by the 12 L2A bands in canonical order (:data:`pipeline.bands.S2_L2A_BANDS`, no B10) or
the 13 L1C bands (:data:`pipeline.bands.S2_L1C_BANDS`). Values are pre-2022 DN (reflectance × 10000,
no +1000 offset: the convention of SSL4EO-S12, downloaded before the processing-baseline 04.00 offset
described on the Earth Engine catalog page of COPERNICUS/S2_HARMONIZED).

The summer class means, spreads, atmosphere, cloud and backscatter rows are typical values we chose for
Sentinel-2 / Sentinel-1 scenes (reflectance × 10000, σ0 in dB), some taken from Esri's spectral profiles
as named. Rows marked OURS are constructions, and the comment says how they were derived: linear mixes
of the other rows fitted to seasonal B4/B8/B11 targets that we set for each state (values and NDVI
given in the comment).
"""

from __future__ import annotations

import numpy as np

from pipeline.bands import DW_CLASSES, S2_L1C_BANDS, S2_L2A_BANDS

WATER, TREES, GRASS, FLOODED, CROPS, SHRUB, BUILT, BARE, SNOW = range(9)
assert DW_CLASSES[WATER] == "water" and DW_CLASSES[SNOW] == "snow_and_ice"
assert len(S2_L2A_BANDS) == 12 and len(S2_L1C_BANDS) == 13

_f32 = np.float32

# --------------------------------------------------------------------------- S2 surface (L2A), summer
#: Class means in summer (L2A DN), columns B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B11 B12.
S2_L2A_SUMMER = np.array([
    [200, 240, 280, 160, 140, 90, 90, 80, 70, 40, 40, 30],                              # water
    [120, 210, 340, 220, 590, 1720, 2150, 2300, 2380, 2300, 1020, 480],                 # trees
    [300, 350, 680, 450, 1200, 3100, 3800, 3950, 4150, 4100, 2200, 1130],               # grass
    [210, 265, 420, 265, 590, 1480, 1820, 1910, 1990, 1940, 980, 495],                  # flooded_vegetation
    [260, 300, 620, 350, 1000, 3200, 4000, 4150, 4250, 4150, 1850, 900],                # crops (peak canopy)
    [340, 430, 650, 640, 1120, 2300, 2780, 2860, 3000, 2950, 2230, 1360],               # shrub_and_scrub
    [910, 1140, 1385, 1440, 1720, 2170, 2360, 2370, 2440, 2390, 2190, 1930],            # built
    [740, 990, 1380, 1790, 2100, 2390, 2570, 2670, 2780, 2850, 3490, 2850],             # bare
    [8000, 8300, 8200, 8100, 8100, 8000, 7800, 7800, 7400, 7000, 1000, 1050],           # snow_and_ice
], dtype=_f32)

#: Per-band spread (1σ, DN): within-class std at 10 m (×0.5 within field, ×1 between fields).
S2_L2A_SPREAD = np.array([
    [60, 70, 90, 80, 70, 40, 40, 35, 30, 30, 20, 15],
    [40, 50, 110, 75, 210, 500, 560, 640, 630, 540, 400, 200],
    [80, 130, 170, 220, 260, 620, 840, 880, 850, 700, 400, 300],
    [70, 80, 140, 100, 220, 550, 650, 700, 700, 600, 350, 180],
    [120, 90, 180, 150, 280, 700, 880, 880, 880, 760, 380, 250],
    [100, 120, 160, 200, 250, 450, 500, 520, 520, 500, 400, 300],
    [250, 300, 330, 350, 380, 450, 480, 500, 500, 480, 450, 450],
    [330, 370, 490, 480, 570, 750, 800, 780, 800, 800, 720, 700],
    [1200, 1100, 1200, 1300, 1300, 1300, 1300, 1400, 1300, 1200, 250, 260],
], dtype=_f32)

# --------------------------------------------------------------------------- seasonal / state rows (L2A)
#: Esri "Dry Vegetation" spectral profile (L2A-like); the dry-season shrub state (B4 1000, B8 2800, B11 2900).
DRY_VEGETATION = np.array([473, 609, 892, 1008, 1466, 2352, 2674, 2826, 2932, 2966, 2924, 1999], dtype=_f32)
#: Esri "Turbid Water" spectral profile: the bright end of the water mix (per-location turbidity).
TURBID_WATER = np.array([721, 900, 1215, 1404, 1491, 1041, 1087, 960, 818, 334, 189, 168], dtype=_f32)
#: Esri "Sand" spectral profile: the arid-location end member of bare (deserts).
SAND = np.array([1705, 2428, 3099, 3652, 3892, 3884, 3972, 4109, 4015, 3724, 4341, 3834], dtype=_f32)

#: OURS: deciduous trees, winter leaf-off. 0.6 × DRY_VEGETATION with B6–B9 scaled so B8 = 1500 and B11 set
#: to 1700, matching our leaf-off target (B4 600, B8 1500, B11 1700, NDVI ≈ 0.43).
TREES_LEAF_OFF = np.array([280, 360, 530, 600, 880, 1250, 1420, 1500, 1555, 1575, 1700, 1160], dtype=_f32)
#: OURS: evergreen conifer, winter without snow. Summer trees with red-edge/NIR × 0.65 and SWIR lowered,
#: matching our evergreen-winter target (B4 250, B8 1500, B11 900, NDVI ≈ 0.71).
TREES_EVERGREEN_WINTER = np.array([120, 210, 330, 250, 560, 1120, 1400, 1500, 1550, 1500, 900, 430], dtype=_f32)
#: OURS: grass, winter / dry season = 0.252 × grass + 0.532 × DRY_VEGETATION (solved on the target B4 650,
#: B8 2500; B11 set to the target 2000; NDVI ≈ 0.59).
GRASS_WINTER = np.array([330, 410, 645, 650, 1080, 2030, 2380, 2500, 2605, 2610, 2000, 1350], dtype=_f32)
#: Crops bare/sown = the summer bare row (B4 1790, B8 2670, B11 3490, NDVI 0.20).
CROPS_BARE_SOIL = S2_L2A_SUMMER[BARE].copy()
#: OURS: crops post-harvest stubble = 0.572 × bare + 0.273 × DRY_VEGETATION (solved on the target B4 1300,
#: B8 2300; B11 set to the target 3000; NDVI ≈ 0.28).
CROPS_STUBBLE = np.array([550, 730, 1035, 1300, 1600, 2010, 2200, 2300, 2390, 2440, 3000, 2180], dtype=_f32)

#: OURS: sign of the "vegetation vigour" texture component per L2A band: more canopy = darker visible/SWIR,
#: brighter red-edge/NIR (B5 neutral). Used to make within-class texture spectrally coherent.
VIGOUR_SIGN = np.array([-1, -1, -1, -1, 0, 1, 1, 1, 1, 1, -1, -1], dtype=_f32)

# --------------------------------------------------------------------------- atmosphere: L1C = T · L2A + P
#: Path offset P_b (DN), L1C order (13 bands). B9 and B10 have no additive term here
#: (B9 is pure transmittance, B10 is generated separately: clear sky 10 ± 2 DN).
L1C_PATH = np.array([950, 600, 350, 200, 150, 140, 120, 100, 90, 0, 0, 30, 20], dtype=_f32)
#: Two-way transmittance T_b, L1C order. B9 = 0.3 nominal (0.15 humid – 0.4 dry), varied per scene;
#: B10 is not a function of the surface (0).
L1C_TRANSMITTANCE = np.array([0.75, 0.80, 0.85, 0.88, 0.85, 0.90, 0.90, 0.88, 0.95, 0.30, 0.0, 0.92, 0.85],
                             dtype=_f32)
#: B10 (cirrus band) over clear sky, mean and spatial std (DN): the water-vapour absorption leaves almost nothing.
B10_CLEAR_MEAN, B10_CLEAR_STD = 10.0, 2.0

# --------------------------------------------------------------------------- clouds (L1C DN, 13 bands)
#: Thick low/mid water cloud (as the core of a cumulus in an SSL4EO-S12 L1C scene).
CLOUD_LOW_L1C = np.array([5000, 5400, 5350, 5650, 5500, 6050, 6700, 6300, 7000, 1250, 15, 5750, 4200],
                         dtype=_f32)
#: Thick high/convective cloud (Esri TOA cloud spectral profile); B10 drawn per scene in 500–3000.
CLOUD_HIGH_L1C = np.array([7600, 8400, 8100, 8850, 8800, 8900, 8950, 9550, 8850, 5000, 1000, 4400, 2550],
                          dtype=_f32)
#: Relative std within thick cloud (5–10 %).
CLOUD_TEXTURE_REL_STD = 0.07

# --------------------------------------------------------------------------- Sentinel-1 GRD (σ0 dB)
#: Per-pixel mean of σ0 dB values (speckle included), VV and VH, per DW class (dry snow).
S1_VV_DB = np.array([-21.5, -9.5, -11.5, -9.0, -12.0, -11.0, -5.0, -11.0, -9.0], dtype=_f32)
S1_VH_DB = np.array([-25.0, -15.0, -16.5, -17.0, -17.5, -17.0, -12.0, -19.5, -18.0], dtype=_f32)
#: The noise-free σ0 field is the class mean + 0.5 dB (the bias of the Gamma speckle below, in dB) ...
S1_SPECKLE_BIAS_DB = 0.5
#: ... with a texture std of about 1–1.5 dB (2.5 dB for built). Water 0.8 is OURS (calm water is smooth;
#: wind roughening is modelled per acquisition instead).
S1_TEXTURE_DB = np.array([0.8, 1.2, 1.2, 1.5, 1.2, 1.3, 2.5, 1.2, 1.2], dtype=_f32)
#: Crops: VH rises ~5–8 dB from bare soil to peak biomass; OURS: 5 dB rise, VV falls 1 dB at peak.
S1_CROPS_BARE_VV_DB, S1_CROPS_BARE_VH_DB = -11.0, -22.5
#: Spatially correlated speckle (ours): S ~ Gamma(shape 0.35, mean 1), Gaussian σ = 1 px, renormalised.
SPECKLE_GAMMA_SHAPE = 0.35
SPECKLE_SMOOTH_SIGMA_PX = 1.0
